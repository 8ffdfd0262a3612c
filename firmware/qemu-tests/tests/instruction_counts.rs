//! The QEMU instruction-counting plugin: exact (a calibration section of known length),
//! repeatable, and giving the f32 reference LSTM's cost per time step.

use recur_firmware_tests::{build_firmware, build_plugin, count_instructions};

#[test]
fn plugin_counts_are_exact_repeatable_and_per_step() {
    let elf = build_firmware("bench").expect("bench build");
    let plugin = build_plugin().expect("plugin build");
    let first = count_instructions(&elf, &plugin, 120).expect("counted run");
    let again = count_instructions(&elf, &plugin, 120).expect("second counted run");
    assert_eq!(first, again, "instruction counts differ between two runs");

    // Back-to-back markers: `bl` + the naked marker's `nop; bx lr`.
    let cal = &first[0];
    assert_eq!(cal.name, "calibration - -");
    assert!(
        !cal.steps.is_empty() && cal.steps.iter().all(|&d| d == 3),
        "{cal:?}"
    );

    let names: Vec<&str> = first[1..].iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "f32-libm I=6 H=32",
            "f32-rational I=6 H=32",
            "f32-libm I=8 H=64",
            "f32-rational I=8 H=64"
        ]
    );
    for s in &first[1..] {
        let n = s.steps.len() as u64;
        let mean = (s.steps.iter().sum::<u64>() + n / 2) / n;
        println!(
            "{:<24} {mean:>7} instructions/step (min {}, max {}, {} steps)",
            s.name,
            s.steps.iter().min().unwrap(),
            s.steps.iter().max().unwrap(),
            s.steps.len()
        );
        // At least one multiply-add's worth per weight: 4 H (I + H) weights.
        let (i, h) = if s.name.ends_with("H=32") {
            (6, 32)
        } else {
            (8, 64)
        };
        assert!(
            mean > 4 * h * (i + h),
            "{}: {mean} is below one instruction per weight",
            s.name
        );
        if s.name.starts_with("f32-rational") {
            // No data-dependent branches: every step costs the same.
            assert!(s.steps.iter().all(|&d| d == s.steps[0]), "{s:?}");
        }
    }
}
