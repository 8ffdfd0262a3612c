//! The IR lift: attributes resolved per the ONNX specification, invalid ones refused naming
//! the node and the attribute.

#[path = "common/onnx_builder.rs"]
mod onnx_builder;

use onnx_builder::{attr_int, attr_string, lstm_model};
use prost::Message;
use recur::error::RecurError;
use recur::ir::{ActivationKind, Cell, Direction, LayerKind, Layout, RecurrentLayer, SequenceLens};
use tract_onnx::pb::AttributeProto;

fn lift(extra: Vec<AttributeProto>) -> Result<recur::ir::RecurrentModel, RecurError> {
    let bytes = lstm_model(extra).encode_to_vec();
    let proto = recur::onnx::decode_proto(std::path::Path::new("mem.onnx"), &bytes)?;
    recur::onnx::lift(&proto)
}

fn only_recurrent(model: &recur::ir::RecurrentModel) -> RecurrentLayer {
    match &model.layers[0].kind {
        LayerKind::Recurrent(r) => (**r).clone(),
        other => panic!("not recurrent: {other:?}"),
    }
}

fn attr_strings(name: &str, values: &[&str]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: 8,
        strings: values.iter().map(|s| s.as_bytes().to_vec()).collect(),
        ..Default::default()
    }
}

fn attr_floats(name: &str, values: &[f32]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: 6,
        floats: values.to_vec(),
        ..Default::default()
    }
}

#[test]
fn defaults_are_filled_in() {
    let model = lift(vec![]).unwrap();
    let r = only_recurrent(&model);
    assert_eq!(
        r.cell,
        Cell::Lstm {
            input_forget: false,
            peepholes: false
        }
    );
    assert_eq!(r.direction, Direction::Forward);
    assert_eq!(r.layout, Layout::SequenceFirst);
    assert_eq!(r.hidden_size, 4);
    assert_eq!(r.input_size, Some(3));
    assert!(!r.custom_activations);
    let kinds: Vec<ActivationKind> = r.activations[0].iter().map(|a| a.kind).collect();
    assert_eq!(
        kinds,
        [
            ActivationKind::Sigmoid,
            ActivationKind::Tanh,
            ActivationKind::Tanh
        ]
    );
    assert_eq!(r.sequence_lens, SequenceLens::Absent);
    assert!(r.outputs.y && r.outputs.y_h && !r.outputs.y_c);
    assert_eq!(model.parameter_count, 4 * 4 * 3 + 4 * 4 * 4 + 8 * 4);
    let w = r.weights.expect("constant weights lifted");
    assert_eq!(w.w.shape(), &[1, 16, 3]);
}

#[test]
fn activations_take_alpha_and_beta_in_order_and_repeat_for_both_directions() {
    let model = lift(vec![
        attr_string("direction", "bidirectional"),
        attr_strings("activations", &["HardSigmoid", "LeakyRelu", "Tanh"]),
        attr_floats("activation_alpha", &[0.3, 0.05]),
        attr_floats("activation_beta", &[0.6]),
    ])
    .unwrap();
    let r = only_recurrent(&model);
    assert!(r.custom_activations);
    assert_eq!(r.activations.len(), 2);
    for dir in &r.activations {
        assert_eq!(dir[0].kind, ActivationKind::HardSigmoid);
        assert_eq!((dir[0].alpha, dir[0].beta), (Some(0.3), Some(0.6)));
        assert_eq!(dir[1].kind, ActivationKind::LeakyRelu);
        assert_eq!(dir[1].alpha, Some(0.05));
        assert_eq!(dir[2].kind, ActivationKind::Tanh);
    }
    // ONNX definitions, spot-checked.
    assert!((r.activations[0][0].apply(1.0) - 0.9).abs() < 1e-6);
    assert!((r.activations[0][1].apply(-2.0) + 0.1).abs() < 1e-6);
}

#[test]
fn invalid_attributes_name_node_and_attribute() {
    let cases: Vec<(AttributeProto, &str)> = vec![
        (attr_string("direction", "sideways"), "direction"),
        (attr_int("layout", 2), "layout"),
        (attr_int("input_forget", 3), "input_forget"),
        (attr_int("linear_before_reset", 1), "linear_before_reset"),
        (
            attr_strings("activations", &["Sigmoid", "Tanh"]),
            "activations",
        ),
        (
            attr_strings("activations", &["Sigmoid", "Tanh", "Swish"]),
            "Swish",
        ),
        (attr_int("hidden_size", 5), "hidden_size"),
        (attr_int("frobnicate", 1), "frobnicate"),
    ];
    for (attr, needle) in cases {
        let mut extra = vec![attr];
        if extra[0].name == "hidden_size" {
            // replace the builder's hidden_size: the weights no longer fit it
            extra = vec![];
            let mut model = lstm_model(vec![]);
            model.graph.as_mut().unwrap().node[0].attribute[0].i = 5;
            let bytes = model.encode_to_vec();
            let proto = recur::onnx::decode_proto(std::path::Path::new("m.onnx"), &bytes).unwrap();
            let err = recur::onnx::lift(&proto).unwrap_err().to_string();
            assert!(
                err.contains("lstm0") && err.contains("does not fit"),
                "{err}"
            );
            continue;
        }
        let err = lift(extra).unwrap_err().to_string();
        assert!(err.contains("node 'lstm0'"), "{err}");
        assert!(err.contains(needle), "'{needle}' missing from: {err}");
    }
}
