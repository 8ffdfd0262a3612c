//! Fuzz target: any bytes through the blob parser; a blob that parses is then run for a few
//! steps (and one window) on samples taken from the same bytes, so the step path is fuzzed
//! too. Any panic, overflow (debug assertions are on) or out-of-bounds access is a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recur_kernel::{Model, Session};

fuzz_target!(|data: &[u8]| {
    // Flash is word-aligned: copy into u32 storage so alignment is not the only thing tested.
    let mut words = vec![0u32; data.len().div_ceil(4)];
    for (i, b) in data.iter().enumerate() {
        words[i / 4] |= (*b as u32) << (8 * (i % 4));
    }
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let aligned = &bytes[..data.len()];
    let Ok(model) = Model::parse(aligned) else {
        return;
    };
    if model.session_len() > 1 << 16 || model.acc_len() > 1 << 16 {
        return;
    }
    let mut mem = vec![0i16; model.session_len()];
    let mut acc = vec![0i32; model.acc_len()];
    let mut session = Session::new(&model, &mut mem, &mut acc).expect("sized from the model");
    let sample: Vec<i16> = (0..model.input_dim)
        .map(|k| {
            let b = data.get(k % data.len().max(1)).copied().unwrap_or(0);
            (b as i16).wrapping_mul(257)
        })
        .collect();
    for _ in 0..3 {
        let _ = session.step(&sample);
    }
    let steps = 3;
    let mut window = vec![0i16; model.window_len(steps)];
    let x: Vec<i16> = sample.iter().cycle().take(steps * model.input_dim).copied().collect();
    let _ = session.run(&x, steps, &mut window);
});
