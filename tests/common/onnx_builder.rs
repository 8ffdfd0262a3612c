//! Small ONNX models written from the tests themselves (through tract's prost types), for
//! tests that need a model of a precise shape rather than a fixture.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use prost::Message;
use tract_onnx::pb::{
    tensor_shape_proto::{dimension::Value as DimValue, Dimension},
    type_proto::{Tensor as TensorType, Value as TypeValue},
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

pub enum D {
    N(i64),
    S(&'static str),
}

pub fn value_info(name: &str, elem_type: i32, dims: &[D]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(TypeValue::TensorType(TensorType {
                elem_type,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            value: Some(match d {
                                D::N(n) => DimValue::DimValue(*n),
                                D::S(s) => DimValue::DimParam(s.to_string()),
                            }),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn f32_tensor(name: &str, dims: &[i64], seed: u32) -> TensorProto {
    let n: i64 = dims.iter().product();
    let mut state = seed.wrapping_mul(2654435761).wrapping_add(1);
    let values = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state % 1000) as f32 / 1000.0 - 0.5
        })
        .collect();
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: 1,
        float_data: values,
        ..Default::default()
    }
}

pub fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: 2,
        i,
        ..Default::default()
    }
}

pub fn attr_string(name: &str, s: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: 3,
        s: s.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// A forward LSTM: X `[seq, batch, 3]` float32 -> Y `[seq, 1, batch, 4]`, Y_h `[1, batch, 4]`,
/// with constant W, R, B and extra attributes on the node.
pub fn lstm_model(extra: Vec<AttributeProto>) -> ModelProto {
    let (input, hidden) = (3, 4);
    let mut attribute = vec![attr_int("hidden_size", hidden)];
    attribute.extend(extra);
    let directions = if attribute
        .iter()
        .any(|a| a.name == "direction" && a.s == b"bidirectional")
    {
        2
    } else {
        1
    };
    ModelProto {
        ir_version: 8,
        producer_name: "recur-tests".into(),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(GraphProto {
            name: "tiny".into(),
            node: vec![NodeProto {
                name: "lstm0".into(),
                op_type: "LSTM".into(),
                input: vec!["X".into(), "W".into(), "R".into(), "B".into()],
                output: vec!["Y".into(), "Y_h".into()],
                attribute,
                ..Default::default()
            }],
            initializer: vec![
                f32_tensor("W", &[directions, 4 * hidden, input], 1),
                f32_tensor("R", &[directions, 4 * hidden, hidden], 2),
                f32_tensor("B", &[directions, 8 * hidden], 3),
            ],
            input: vec![value_info(
                "X",
                1,
                &[D::S("seq"), D::S("batch"), D::N(input)],
            )],
            output: vec![
                value_info(
                    "Y",
                    1,
                    &[D::S("seq"), D::N(directions), D::S("batch"), D::N(hidden)],
                ),
                value_info("Y_h", 1, &[D::N(directions), D::S("batch"), D::N(hidden)]),
            ],
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn write_model(dir: &std::path::Path, name: &str, model: &ModelProto) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, model.encode_to_vec()).expect("model written");
    path
}

/// [`lstm_model`] fed by a token embedding: int64 `tokens` `[seq, batch]`, looked up in a
/// constant `[7, 3]` table by a Gather (through a Cast to int32 first when `cast`, as
/// tf2onnx writes it), then the LSTM.
pub fn embedding_lstm_model(cast: bool) -> ModelProto {
    let mut model = lstm_model(vec![]);
    let graph = model.graph.as_mut().expect("graph");
    let indices = if cast { "tokens32" } else { "tokens" };
    let mut nodes = vec![];
    if cast {
        nodes.push(NodeProto {
            name: "cast0".into(),
            op_type: "Cast".into(),
            input: vec!["tokens".into()],
            output: vec!["tokens32".into()],
            attribute: vec![attr_int("to", 6)],
            ..Default::default()
        });
    }
    nodes.push(NodeProto {
        name: "embed0".into(),
        op_type: "Gather".into(),
        input: vec!["table".into(), indices.into()],
        output: vec!["emb".into()],
        ..Default::default()
    });
    graph.node[0].input[0] = "emb".into();
    nodes.append(&mut graph.node);
    graph.node = nodes;
    graph.initializer.push(f32_tensor("table", &[7, 3], 4));
    graph.input = vec![value_info("tokens", 7, &[D::S("seq"), D::S("batch")])];
    model
}
