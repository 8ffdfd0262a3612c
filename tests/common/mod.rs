//! Shared by the integration tests: the fixture cases under `models/` and the comparison rule.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use recur::tensor::{read_npy, HostTensor};

/// One fixture case (see models/CASE-FORMAT.md).
#[derive(Debug, Clone)]
pub struct Case {
    pub dir: PathBuf,
    pub name: String,
    pub group: String,
    pub inputs: Vec<(String, PathBuf)>,
    pub outputs: Vec<(String, PathBuf)>,
    pub atol: f32,
    pub rtol: f32,
    pub reference: String,
}

impl Case {
    pub fn model_path(&self) -> PathBuf {
        self.dir.join("model.onnx")
    }

    pub fn id(&self) -> String {
        format!("{}/{}", self.group, self.name)
    }

    pub fn read_inputs(&self) -> Vec<(String, HostTensor)> {
        self.inputs
            .iter()
            .map(|(n, p)| (n.clone(), read_npy(p).expect("fixture input reads")))
            .collect()
    }

    pub fn read_expected(&self) -> Vec<(String, ArrayD<f32>)> {
        self.outputs
            .iter()
            .map(|(n, p)| {
                (
                    n.clone(),
                    read_npy(p).expect("fixture output reads").to_f32(),
                )
            })
            .collect()
    }

    /// Compares outputs (in graph order) with the reference; the first failure, described.
    pub fn check(&self, actual: &[(String, HostTensor)]) -> Result<f32, String> {
        let expected = self.read_expected();
        if actual.len() != expected.len() {
            return Err(format!(
                "{} outputs, {} expected",
                actual.len(),
                expected.len()
            ));
        }
        let mut worst = 0f32;
        for ((name, got), (ename, want)) in actual.iter().zip(&expected) {
            if name != ename {
                return Err(format!("output '{name}' where '{ename}' was expected"));
            }
            worst = worst.max(
                compare(&got.to_f32(), want, self.atol, self.rtol)
                    .map_err(|e| format!("output '{name}': {e}"))?,
            );
        }
        Ok(worst)
    }
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every case under models/<group>/<case>/case.json, sorted by id.
pub fn all_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for group in ["node", "matrix", "real"] {
        let Ok(entries) = std::fs::read_dir(repo_root().join("models").join(group)) else {
            continue;
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            if dir.join("case.json").is_file() {
                cases.push(read_case(&dir, group));
            }
        }
    }
    cases.sort_by_key(|c| c.id());
    cases
}

fn read_case(dir: &Path, group: &str) -> Case {
    let text = std::fs::read_to_string(dir.join("case.json")).expect("case.json reads");
    let json: serde_json::Value = serde_json::from_str(&text).expect("case.json parses");
    let list = |key: &str| -> Vec<(String, PathBuf)> {
        json[key]
            .as_array()
            .unwrap_or_else(|| panic!("{}: '{key}' is a list", dir.display()))
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().expect("name").to_string(),
                    dir.join(e["file"].as_str().expect("file")),
                )
            })
            .collect()
    };
    Case {
        dir: dir.to_path_buf(),
        name: json["name"].as_str().unwrap_or_default().to_string(),
        group: group.to_string(),
        inputs: list("inputs"),
        outputs: list("outputs"),
        atol: json["atol"].as_f64().unwrap_or(1e-5) as f32,
        rtol: json["rtol"].as_f64().unwrap_or(0.0) as f32,
        reference: json["reference"].as_str().unwrap_or_default().to_string(),
    }
}

/// `|a - b| <= atol + rtol * |b|` everywhere; returns the largest absolute error.
pub fn compare(
    actual: &ArrayD<f32>,
    expected: &ArrayD<f32>,
    atol: f32,
    rtol: f32,
) -> Result<f32, String> {
    if actual.shape() != expected.shape() {
        return Err(format!(
            "shape {:?}, expected {:?}",
            actual.shape(),
            expected.shape()
        ));
    }
    let mut worst = 0f32;
    for ((index, a), b) in actual.indexed_iter().zip(expected.iter()) {
        let err = (a - b).abs();
        // NaN in either array fails too: `err <= bound` is false for NaN.
        let within = err <= atol + rtol * b.abs();
        if !within {
            return Err(format!(
                "at {:?}: {a} vs {b} (error {err:.3e} > {atol:.0e} + {rtol:.0e}*|ref|)",
                ndarray::Dimension::slice(&index).to_vec()
            ));
        }
        worst = worst.max(err);
    }
    Ok(worst)
}

/// The first recurrent layer of `model` (node name and layer), for tests that build
/// microcontroller chains around it.
pub fn first_recurrent_layer(model: &recur::model::Model) -> (String, recur::ir::RecurrentLayer) {
    model
        .ir
        .layers
        .iter()
        .find_map(|l| match &l.kind {
            recur::ir::LayerKind::Recurrent(r) => Some((l.node.clone(), r.as_ref().clone())),
            _ => None,
        })
        .expect("a recurrent layer")
}

/// How much room for tables a host-stepped session gets beyond its accumulators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)] // each test binary uses some
pub enum Tables {
    /// None: the session reads every parameter from the blob.
    None,
    /// [`recur_kernel::Model::row_tables_len`]: row tables, the weights where they are.
    RowsOnly,
    /// [`recur_kernel::Model::tables_len`]: row tables and gate rows repacked in pairs
    /// (what recur-firmware and `recur sim` give).
    Full,
    /// No tables, and every layer's fast-path flags cleared as if the parser had not proven
    /// its bounds: the general path, int64 accumulators and `requant` everywhere, which the
    /// fast paths (and the firmware's asm) must equal bit for bit.
    GeneralPath,
}

/// A blob's output after every sample of `x` (`[N, T, F]` f32), stepped through recur-kernel
/// on the host from a zero state per sequence, with `tables` room: `[N, T, O]`.
pub fn host_stepped(blob: &[u8], x: &ArrayD<f32>, tables: Tables) -> ndarray::ArrayD<i16> {
    let words = recur::quant::sim::aligned(blob);
    let mut model = recur::quant::sim::parse(&words, blob.len(), "blob").unwrap();
    let (n, t, f) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    let extra = match tables {
        Tables::None => 0,
        Tables::RowsOnly => model.row_tables_len(),
        Tables::Full => model.tables_len(),
        Tables::GeneralPath => {
            for p in model.layers.iter_mut().flat_map(|l| l.params.iter_mut()) {
                (p.fast, p.acc32, p.table) = (false, false, None);
            }
            0
        }
    };
    let mut mem = vec![0i16; model.session_len()];
    let mut acc = vec![0i32; model.acc_len() + extra];
    let mut session = recur_kernel::Session::new(&model, &mut mem, &mut acc).unwrap();
    assert_eq!(session.has_row_tables(), extra > 0);
    let mut out = Vec::with_capacity(n * t * model.output_dim);
    for s in 0..n {
        session.reset();
        for k in 0..t {
            let q: Vec<i16> = (0..f)
                .map(|c| model.quantize_feature(c, x[[s, k, c]]))
                .collect();
            out.extend_from_slice(session.step(&q).unwrap());
        }
    }
    ArrayD::from_shape_vec(vec![n, t, model.output_dim], out).unwrap()
}
