//! recur's f32 kernels against a plain scalar reference of the ONNX specification, written
//! here from the spec in f64 with no shared code. The reference is first checked against
//! ONNX Runtime on every attribute-matrix fixture; then property tests draw random sizes and
//! attributes and compare the kernels with it.

#![allow(clippy::needless_range_loop)] // the reference indexes as the specification writes it

mod common;

use ndarray::{Array3, Array4, ArrayD, Ix2, Ix3};
use proptest::prelude::*;
use recur::ir::{Activation, ActivationKind, Cell, Direction, Layout, Source};
use recur::kernels::{run_layer, LayerSpec, LayerWeights};
use recur::model::Model;

use common::{all_cases, compare};

/// One ONNX recurrent layer, every attribute included.
#[derive(Debug, Clone)]
struct Layer {
    cell: Cell,
    direction: Direction,
    hidden: usize,
    activations: Vec<Vec<Activation>>,
    clip: Option<f32>,
    /// W `[D, G*H, I]`, R `[D, G*H, H]`, B `[D, 2*G*H]`, P `[D, 3*H]`.
    w: Array3<f32>,
    r: Array3<f32>,
    b: Option<ndarray::Array2<f32>>,
    p: Option<ndarray::Array2<f32>>,
}

fn act(a: &Activation, x: f64) -> f64 {
    let al = a.alpha.unwrap_or(0.0) as f64;
    let be = a.beta.unwrap_or(0.0) as f64;
    match a.kind {
        ActivationKind::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        ActivationKind::Tanh => x.tanh(),
        ActivationKind::Relu => x.max(0.0),
        ActivationKind::Affine => al * x + be,
        ActivationKind::LeakyRelu => {
            if x >= 0.0 {
                x
            } else {
                al * x
            }
        }
        ActivationKind::ThresholdedRelu => {
            if x > al {
                x
            } else {
                0.0
            }
        }
        ActivationKind::ScaledTanh => al * (be * x).tanh(),
        ActivationKind::HardSigmoid => (al * x + be).clamp(0.0, 1.0),
        ActivationKind::Elu => {
            if x >= 0.0 {
                x
            } else {
                al * (x.exp() - 1.0)
            }
        }
        ActivationKind::Softsign => x / (1.0 + x.abs()),
        ActivationKind::Softplus => (1.0 + x.exp()).ln(),
    }
}

/// The ONNX specification, step by step, in f64: returns Y `[T, D, B, H]`, Y_h and Y_c
/// `[D, B, H]`. Steps past a sequence's length give zero in Y and keep the state.
fn reference(
    l: &Layer,
    x: &Array3<f32>,
    lens: Option<&[usize]>,
    h0: Option<&Array3<f32>>,
    c0: Option<&Array3<f32>>,
) -> (Array4<f32>, Array3<f32>, Array3<f32>) {
    let (t_len, batch, input) = x.dim();
    let h = l.hidden;
    let dirs = l.direction.count();
    let mut y = Array4::<f32>::zeros((t_len, dirs, batch, h));
    let mut yh = Array3::<f32>::zeros((dirs, batch, h));
    let mut yc = Array3::<f32>::zeros((dirs, batch, h));
    let clip = |v: f64| match l.clip {
        Some(c) => v.clamp(-c as f64, c as f64),
        None => v,
    };
    for d in 0..dirs {
        let acts = &l.activations[d];
        let reverse = l.direction == Direction::Reverse || d == 1;
        for b in 0..batch {
            let len = lens.map_or(t_len, |v| v[b]);
            let mut hs: Vec<f64> = (0..h)
                .map(|k| h0.map_or(0.0, |a| a[[d, b, k]] as f64))
                .collect();
            let mut cs: Vec<f64> = (0..h)
                .map(|k| c0.map_or(0.0, |a| a[[d, b, k]] as f64))
                .collect();
            for s in 0..len {
                let t = if reverse { len - 1 - s } else { s };
                // gate g, unit k: x·W[g*h+k] + Wb + (h·R[g*h+k] + Rb)
                let xw = |g: usize, k: usize| -> f64 {
                    let row = g * h + k;
                    let mut v = l.b.as_ref().map_or(0.0, |bb| bb[[d, row]] as f64);
                    for i in 0..input {
                        v += x[[t, b, i]] as f64 * l.w[[d, row, i]] as f64;
                    }
                    v
                };
                let hr = |g: usize, k: usize, hv: &[f64]| -> f64 {
                    let row = g * h + k;
                    let gates = l.cell.gates();
                    let mut v =
                        l.b.as_ref()
                            .map_or(0.0, |bb| bb[[d, gates * h + row]] as f64);
                    for j in 0..h {
                        v += hv[j] * l.r[[d, row, j]] as f64;
                    }
                    v
                };
                let peep =
                    |g: usize, k: usize| l.p.as_ref().map_or(0.0, |p| p[[d, g * h + k]] as f64);
                match l.cell {
                    Cell::Rnn => {
                        hs = (0..h)
                            .map(|k| act(&acts[0], clip(xw(0, k) + hr(0, k, &hs))))
                            .collect();
                    }
                    Cell::Lstm { input_forget, .. } => {
                        // ONNX order i, o, f, c; P order i, o, f.
                        let mut nh = vec![0.0; h];
                        let mut nc = vec![0.0; h];
                        for k in 0..h {
                            let i = act(
                                &acts[0],
                                clip(xw(0, k) + hr(0, k, &hs) + peep(0, k) * cs[k]),
                            );
                            let f = if input_forget {
                                1.0 - i
                            } else {
                                act(
                                    &acts[0],
                                    clip(xw(2, k) + hr(2, k, &hs) + peep(2, k) * cs[k]),
                                )
                            };
                            let c = act(&acts[1], clip(xw(3, k) + hr(3, k, &hs)));
                            nc[k] = f * cs[k] + i * c;
                            let o = act(
                                &acts[0],
                                clip(xw(1, k) + hr(1, k, &hs) + peep(1, k) * nc[k]),
                            );
                            nh[k] = o * act(&acts[2], nc[k]);
                        }
                        hs = nh;
                        cs = nc;
                    }
                    Cell::Gru {
                        linear_before_reset,
                    } => {
                        // ONNX order z, r, h.
                        let z: Vec<f64> = (0..h)
                            .map(|k| act(&acts[0], clip(xw(0, k) + hr(0, k, &hs))))
                            .collect();
                        let r: Vec<f64> = (0..h)
                            .map(|k| act(&acts[0], clip(xw(1, k) + hr(1, k, &hs))))
                            .collect();
                        let cand: Vec<f64> = if linear_before_reset {
                            (0..h)
                                .map(|k| act(&acts[1], clip(xw(2, k) + r[k] * hr(2, k, &hs))))
                                .collect()
                        } else {
                            let rh: Vec<f64> = (0..h).map(|k| r[k] * hs[k]).collect();
                            (0..h)
                                .map(|k| act(&acts[1], clip(xw(2, k) + hr(2, k, &rh))))
                                .collect()
                        };
                        hs = (0..h)
                            .map(|k| (1.0 - z[k]) * cand[k] + z[k] * hs[k])
                            .collect();
                    }
                }
                for k in 0..h {
                    y[[t, d, b, k]] = hs[k] as f32;
                }
            }
            for k in 0..h {
                yh[[d, b, k]] = hs[k] as f32;
                yc[[d, b, k]] = cs[k] as f32;
            }
        }
    }
    (y, yh, yc)
}

fn kernels(
    l: &Layer,
    x: &Array3<f32>,
    lens: Option<&[usize]>,
    h0: Option<&Array3<f32>>,
    c0: Option<&Array3<f32>>,
) -> (Array4<f32>, Array3<f32>, Array3<f32>) {
    let spec = LayerSpec {
        cell: l.cell.clone(),
        direction: l.direction,
        hidden: l.hidden,
        activations: l.activations.clone(),
        clip: l.clip,
    };
    let weights = LayerWeights::prepare(
        &spec,
        l.w.view(),
        l.r.view(),
        l.b.as_ref().map(|b| b.view()),
        l.p.as_ref().map(|p| p.view()),
    )
    .expect("weights fit");
    let out = run_layer(
        &spec,
        &weights,
        x.view(),
        lens,
        h0.map(|a| a.view()),
        c0.map(|a| a.view()),
    );
    let (t, db, h) = out.y.dim();
    let d = l.direction.count();
    let y = out
        .y
        .into_shape_with_order((t, d, db / d, h))
        .expect("Y splits by direction");
    (y, out.y_h, out.y_c)
}

/// The reference agrees with ONNX Runtime on every attribute-matrix fixture: it is a sound
/// yardstick for the property tests.
#[test]
fn the_scalar_reference_matches_onnx_runtime_on_the_attribute_matrix() {
    let mut checked = 0;
    for case in all_cases().into_iter().filter(|c| c.group == "matrix") {
        let model = Model::load(&case.model_path()).expect("loads");
        let (_, r) = model
            .ir
            .recurrent_layers()
            .next()
            .expect("one recurrent node");
        let w = r.weights.as_ref().expect("constant weights");
        let layer = Layer {
            cell: r.cell.clone(),
            direction: r.direction,
            hidden: r.hidden_size,
            activations: r.activations.clone(),
            clip: r.clip,
            w: w.w.clone().into_dimensionality::<Ix3>().unwrap(),
            r: w.r.clone().into_dimensionality::<Ix3>().unwrap(),
            b: w.b.clone().map(|b| b.into_dimensionality::<Ix2>().unwrap()),
            p: w.p.clone().map(|p| p.into_dimensionality::<Ix2>().unwrap()),
        };
        let inputs = case.read_inputs();
        let given = |slot: usize| -> Option<ArrayD<f32>> {
            let name = r.input_names.get(slot).filter(|n| !n.is_empty())?;
            inputs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.to_f32())
        };
        let batch_first = r.layout == Layout::BatchFirst;
        let seq_first3 = |a: ArrayD<f32>, perm: [usize; 3]| -> Array3<f32> {
            let a = a.into_dimensionality::<Ix3>().unwrap();
            if batch_first {
                a.permuted_axes(perm).as_standard_layout().into_owned()
            } else {
                a
            }
        };
        let x = seq_first3(given(0).expect("X is an input"), [1, 0, 2]);
        let lens: Option<Vec<usize>> = match &r.sequence_lens {
            recur::ir::SequenceLens::Constant { values, .. } => {
                Some(values.iter().map(|&v| v as usize).collect())
            }
            _ => given(4).map(|a| a.iter().map(|&v| v as usize).collect()),
        };
        let state = |slot: usize, source: &Source| -> Option<Array3<f32>> {
            match source {
                Source::Absent => None,
                _ => given(slot).map(|a| seq_first3(a, [1, 0, 2])),
            }
        };
        if matches!(r.initial_h, Source::Constant) || matches!(r.initial_c, Source::Constant) {
            continue; // constant initial states are exercised through the fixtures test
        }
        let (h0, c0) = (state(5, &r.initial_h), state(6, &r.initial_c));
        let (y, yh, yc) = reference(&layer, &x, lens.as_deref(), h0.as_ref(), c0.as_ref());
        let mut produced = vec![];
        if r.outputs.y {
            let y = if batch_first {
                y.permuted_axes([2, 0, 1, 3])
                    .as_standard_layout()
                    .into_owned()
            } else {
                y
            };
            produced.push(y.into_dyn());
        }
        let to_layout = |a: Array3<f32>| {
            if batch_first {
                a.permuted_axes([1, 0, 2]).as_standard_layout().into_owned()
            } else {
                a
            }
        };
        if r.outputs.y_h {
            produced.push(to_layout(yh).into_dyn());
        }
        if r.outputs.y_c {
            produced.push(to_layout(yc).into_dyn());
        }
        let expected = case.read_expected();
        assert_eq!(produced.len(), expected.len(), "{}", case.id());
        for (got, (name, want)) in produced.iter().zip(&expected) {
            compare(got, want, case.atol, case.rtol)
                .unwrap_or_else(|e| panic!("{} {name}: {e}", case.id()));
        }
        checked += 1;
    }
    assert!(checked >= 90, "only {checked} matrix cases checked");
}

/// Every ONNX activation but ThresholdedRelu, whose jump at alpha turns a last-bit rounding
/// difference into an error of alpha (the attribute-matrix fixtures cover it against ONNX
/// Runtime).
const ANY: &[ActivationKind] = &[
    ActivationKind::Sigmoid,
    ActivationKind::Tanh,
    ActivationKind::Relu,
    ActivationKind::Affine,
    ActivationKind::LeakyRelu,
    ActivationKind::ScaledTanh,
    ActivationKind::HardSigmoid,
    ActivationKind::Elu,
    ActivationKind::Softsign,
    ActivationKind::Softplus,
];

/// Bounded functions for the gates of LSTM and GRU: an unbounded gate (affine, say) makes the
/// cell state grow geometrically, and f32 rounding with it, so nothing could be compared.
const GATES: &[ActivationKind] = &[
    ActivationKind::Sigmoid,
    ActivationKind::Tanh,
    ActivationKind::ScaledTanh,
    ActivationKind::HardSigmoid,
    ActivationKind::Softsign,
];

fn activation_strategy(kinds: &'static [ActivationKind]) -> impl Strategy<Value = Activation> {
    (0..kinds.len(), -1.5f32..1.5, -1.0f32..1.0).prop_map(move |(k, a, b)| {
        let mut act = Activation::plain(kinds[k]);
        if act.alpha.is_some() {
            act.alpha = Some(a);
        }
        if act.beta.is_some() {
            act.beta = Some(b);
        }
        act
    })
}

#[derive(Debug, Clone)]
struct Draw {
    layer: Layer,
    x: Array3<f32>,
    lens: Option<Vec<usize>>,
    h0: Option<Array3<f32>>,
    c0: Option<Array3<f32>>,
}

fn draw() -> impl Strategy<Value = Draw> {
    let sizes = (
        1usize..7,
        // From 4 sequences on, every step takes one matrix product for the whole batch.
        1usize..8,
        1usize..6,
        1usize..10,
        0usize..3,
        0usize..5,
    );
    let flags = (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
    );
    (
        sizes,
        flags,
        proptest::collection::vec(activation_strategy(ANY), 6),
        proptest::collection::vec(activation_strategy(GATES), 2),
    )
        .prop_map(
            |(
                (t, batch, input, h, dir, cell),
                (clip, extra, lens, states, peep, bias, seed),
                acts,
                gates,
            )| {
                let mut rng = seed;
                let mut next = move || {
                    rng = rng
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((rng >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
                };
                let cell = match cell {
                    0 => Cell::Rnn,
                    1 => Cell::Gru {
                        linear_before_reset: extra,
                    },
                    2 => Cell::Gru {
                        linear_before_reset: !extra,
                    },
                    _ => Cell::Lstm {
                        input_forget: extra,
                        peepholes: peep,
                    },
                };
                let direction = [
                    Direction::Forward,
                    Direction::Reverse,
                    Direction::Bidirectional,
                ][dir];
                let d = direction.count();
                let g = cell.gates();
                let per = cell.activations_per_direction();
                let activations: Vec<Vec<Activation>> = (0..d)
                    .map(|k| {
                        let mut list = acts[k * per % 6..][..per].to_vec();
                        if !matches!(cell, Cell::Rnn) {
                            list[0] = gates[k];
                        }
                        list
                    })
                    .collect();
                let w = Array3::from_shape_fn((d, g * h, input), |_| next() * 0.6);
                let r = Array3::from_shape_fn((d, g * h, h), |_| next() * 0.6);
                let b =
                    bias.then(|| ndarray::Array2::from_shape_fn((d, 2 * g * h), |_| next() * 0.5));
                let p = (peep && matches!(cell, Cell::Lstm { .. }))
                    .then(|| ndarray::Array2::from_shape_fn((d, 3 * h), |_| next() * 0.5));
                let cell = match cell {
                    Cell::Lstm { input_forget, .. } => Cell::Lstm {
                        input_forget,
                        peepholes: p.is_some(),
                    },
                    c => c,
                };
                let x = Array3::from_shape_fn((t, batch, input), |_| next() * 2.0);
                let lens = lens.then(|| {
                    (0..batch)
                        .map(|_| ((next() + 1.0) * 0.5 * (t + 1) as f32) as usize % (t + 1))
                        .collect()
                });
                let h0 = states.then(|| Array3::from_shape_fn((d, batch, h), |_| next()));
                let c0 = (states && matches!(cell, Cell::Lstm { .. }))
                    .then(|| Array3::from_shape_fn((d, batch, h), |_| next()));
                Draw {
                    layer: Layer {
                        cell,
                        direction,
                        hidden: h,
                        activations,
                        clip: clip.then_some(0.5 + (seed % 7) as f32 * 0.5),
                        w,
                        r,
                        b,
                        p,
                    },
                    x,
                    lens,
                    h0,
                    c0,
                }
            },
        )
}

/// `draw` with every input, weight and initial state moved by about eight f32 ulps
/// (relative 2^-20, the sign varying from element to element): the reference's change under
/// this measures how much the draw amplifies rounding.
fn nudged(draw: &Draw) -> Draw {
    let mut k = 0u32;
    let mut nudge = |v: &mut f32| {
        k = k.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let sign = if k >> 31 == 0 { 1.0 } else { -1.0 };
        *v *= 1.0 + sign * (2f32).powi(-20);
    };
    let mut d = draw.clone();
    d.x.iter_mut().for_each(&mut nudge);
    d.layer.w.iter_mut().for_each(&mut nudge);
    d.layer.r.iter_mut().for_each(&mut nudge);
    for a in [&mut d.layer.b, &mut d.layer.p].into_iter().flatten() {
        a.iter_mut().for_each(&mut nudge);
    }
    for a in [&mut d.h0, &mut d.c0].into_iter().flatten() {
        a.iter_mut().for_each(&mut nudge);
    }
    d
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Random cells, directions, activations with alpha/beta, clip, input_forget, peepholes,
    /// ragged lengths and initial states: the kernels equal the reference.
    #[test]
    fn kernels_equal_the_scalar_reference(draw in draw()) {
        let Draw { layer, x, lens, h0, c0 } = &draw;
        let (ry, rh, rc) = reference(layer, x, lens.as_deref(), h0.as_ref(), c0.as_ref());
        // Unbounded activations can overflow f32 altogether; such draws say nothing.
        prop_assume!(ry.iter().chain(rc.iter()).all(|v| v.abs() < 1e6));
        let (ky, kh, kc) = kernels(layer, x, lens.as_deref(), h0.as_ref(), c0.as_ref());
        // A draw whose gates amplify (activations with a slope above one, say) amplifies
        // rounding too: the reference moved by a few ulps of its inputs says by how much, and
        // the kernels may differ by a few times that.
        let n = nudged(&draw);
        let (ny, nh, nc) = reference(&n.layer, &n.x, lens.as_deref(), n.h0.as_ref(), n.c0.as_ref());
        let spread = ry.iter().zip(ny.iter())
            .chain(rh.iter().zip(nh.iter()))
            .chain(rc.iter().zip(nc.iter()))
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        let tol = 2e-5 + 4.0 * spread;
        // Unbounded activations (affine, softplus, elu) can grow states to 1e13, where f32
        // itself only resolves about 1e-7 relative per operation.
        let rtol = 1e-4;
        for (got, want, what) in [(ky.into_dyn(), ry.into_dyn(), "Y"), (kh.into_dyn(), rh.into_dyn(), "Y_h")] {
            prop_assert!(compare(&got, &want, tol, rtol).is_ok(), "{what}: {:?}", compare(&got, &want, tol, rtol));
        }
        if matches!(layer.cell, Cell::Lstm { .. }) {
            prop_assert!(compare(&kc.clone().into_dyn(), &rc.clone().into_dyn(), tol, rtol).is_ok(), "Y_c: {:?}", compare(&kc.into_dyn(), &rc.into_dyn(), tol, rtol));
        }
    }
}
