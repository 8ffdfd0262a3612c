//! Rewrites batch-first (`layout=1`) LSTM/GRU/RNN nodes to `layout=0`, for ONNX Runtime,
//! whose CPU and CUDA kernels refuse `layout=1`.
//!
//! The rewrite is exact (only data movement): a `Transpose` in front of `X` (`[batch, seq,
//! input]` to `[seq, batch, input]`) and of `initial_h` / `initial_c` (`[batch, dirs, hidden]`
//! to `[dirs, batch, hidden]`), the node itself with `layout=0`, and a `Transpose` behind `Y`
//! (`[seq, dirs, batch, hidden]` back to `[batch, seq, dirs, hidden]`) and behind `Y_h` / `Y_c`.
//! Graph inputs and outputs keep their names, shapes and meaning. Subgraphs (Loop bodies) are
//! rewritten too.

use tract_onnx::pb::{AttributeProto, GraphProto, ModelProto, NodeProto};

/// ONNX `AttributeProto.AttributeType.INTS`.
const ATTR_INTS: i32 = 7;

const RECURRENT_OPS: [&str; 3] = ["LSTM", "GRU", "RNN"];

/// Rewrites every `layout=1` recurrent node of the model (main graph and subgraphs) to
/// `layout=0`; returns how many nodes were rewritten.
pub fn relayout_to_sequence_first(model: &mut ModelProto) -> usize {
    let mut counter = 0;
    if let Some(graph) = model.graph.as_mut() {
        rewrite_graph(graph, &mut counter);
    }
    counter
}

/// Whether any recurrent node of the model (subgraphs included) has `layout=1`.
pub fn has_batch_first(model: &ModelProto) -> bool {
    fn in_graph(g: &GraphProto) -> bool {
        g.node.iter().any(|n| {
            is_batch_first(n)
                || n.attribute
                    .iter()
                    .any(|a| a.g.as_ref().is_some_and(in_graph) || a.graphs.iter().any(in_graph))
        })
    }
    model.graph.as_ref().is_some_and(in_graph)
}

fn is_recurrent(node: &NodeProto) -> bool {
    (node.domain.is_empty() || node.domain == "ai.onnx")
        && RECURRENT_OPS.contains(&node.op_type.as_str())
}

fn is_batch_first(node: &NodeProto) -> bool {
    is_recurrent(node)
        && node
            .attribute
            .iter()
            .any(|a| a.name == "layout" && a.i == 1)
}

fn rewrite_graph(graph: &mut GraphProto, counter: &mut usize) {
    let nodes = std::mem::take(&mut graph.node);
    let mut out = Vec::with_capacity(nodes.len());
    for mut node in nodes {
        for attr in node.attribute.iter_mut() {
            if let Some(g) = attr.g.as_mut() {
                rewrite_graph(g, counter);
            }
            for g in attr.graphs.iter_mut() {
                rewrite_graph(g, counter);
            }
        }
        if !is_batch_first(&node) {
            out.push(node);
            continue;
        }
        let id = *counter;
        *counter += 1;
        let tag = |what: &str| format!("recur_relayout{id}_{what}");
        // Inputs: X (0), initial_h (5), initial_c (6) are batch-first under layout=1.
        for (index, what, perm) in [
            (0usize, "X", vec![1i64, 0, 2]),
            (5, "initial_h", vec![1, 0, 2]),
            (6, "initial_c", vec![1, 0, 2]),
        ] {
            if let Some(name) = node.input.get(index).filter(|n| !n.is_empty()).cloned() {
                let moved = tag(what);
                out.push(transpose(&tag(&format!("{what}_T")), &name, &moved, perm));
                node.input[index] = moved;
            }
        }
        // Outputs: Y (0), Y_h (1), Y_c (2).
        let mut after = Vec::new();
        for (index, what, perm) in [
            (0usize, "Y", vec![2i64, 0, 1, 3]),
            (1, "Y_h", vec![1, 0, 2]),
            (2, "Y_c", vec![1, 0, 2]),
        ] {
            if let Some(name) = node.output.get(index).filter(|n| !n.is_empty()).cloned() {
                let inner = tag(what);
                after.push(transpose(&tag(&format!("{what}_T")), &inner, &name, perm));
                node.output[index] = inner;
            }
        }
        for attr in node.attribute.iter_mut() {
            if attr.name == "layout" {
                attr.i = 0;
            }
        }
        out.push(node);
        out.extend(after);
    }
    graph.node = out;
}

fn transpose(name: &str, input: &str, output: &str, perm: Vec<i64>) -> NodeProto {
    NodeProto {
        name: name.to_string(),
        op_type: "Transpose".into(),
        input: vec![input.to_string()],
        output: vec![output.to_string()],
        attribute: vec![AttributeProto {
            name: "perm".into(),
            r#type: ATTR_INTS,
            ints: perm,
            ..Default::default()
        }],
        ..Default::default()
    }
}
