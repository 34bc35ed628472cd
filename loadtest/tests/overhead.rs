//! `overhead` with tiny iteration counts: every cell yields a row, and the row's arithmetic
//! holds (overhead = total − floor).

use sealpost_core::engine::{Backend, Engine};
use sealpost_loadtest::overhead::{self, OverheadOptions};
use sealpost_loadtest::speed::Op;
use std::time::Duration;

/// The SIMD backends this CPU runs, else the portable one (so the test runs everywhere).
fn engines() -> Vec<Engine> {
    let v = overhead::default_engines();
    if v.is_empty() {
        vec![Engine::new(Backend::Portable).expect("portable runs everywhere")]
    } else {
        v
    }
}

#[test]
fn every_op_yields_consistent_rows() {
    for op in [Op::Verify, Op::Seal, Op::Open] {
        let opts = OverheadOptions {
            op,
            size: 64,
            batches: vec![1, 17, 64],
            engines: engines(),
            iterations: Some(3),
            repeat: 3,
            floor_budget: Duration::from_millis(20),
            ..OverheadOptions::default()
        };
        let mut samples = 0;
        let report = overhead::run(&opts, |_| samples += 1).expect("run");
        let cells = opts.batches.len() * opts.engines.len();
        assert_eq!(samples, cells * opts.repeat, "{op:?}");
        assert_eq!(report.rows.len(), cells, "{op:?}");
        for row in &report.rows {
            assert_eq!(row.op, op);
            assert_eq!(row.iterations, 3);
            assert_eq!(row.tsc_per_envelope_samples.len(), opts.repeat);
            assert!(row.ns_per_envelope > 0.0, "{row:?}");
            assert_eq!((row.aad_len, row.message_len), op.shape(64));
            if cfg!(target_arch = "x86_64") {
                let total = row.core_cycles_per_envelope.expect("core cycles on x86_64");
                let floor = row.floor_core_cycles_per_envelope.expect("a kernel floor");
                let over = row.overhead_core_cycles_per_envelope.expect("an overhead");
                assert!(total > 0.0 && floor > 0.0, "{row:?}");
                assert!((over - (total - floor)).abs() < 1e-9, "{row:?}");
                let frac = row.floor_fraction.expect("a fraction");
                assert!((frac - floor / total).abs() < 1e-12, "{row:?}");
                assert_eq!(row.target_met, Some(over <= opts.target));
            }
        }
        let json = serde_json::to_value(&report).expect("serializes");
        assert!(json["machine"].get("cpu_model").is_some());
        assert_eq!(json["rows"].as_array().map(Vec::len), Some(cells));
    }
}

#[test]
fn without_the_floor_only_ticks_are_reported() {
    let opts = OverheadOptions {
        batches: vec![8],
        engines: engines(),
        iterations: Some(1),
        repeat: 1,
        floor: false,
        ..OverheadOptions::default()
    };
    let report = overhead::run(&opts, |_| {}).expect("run");
    assert!(report.core_cycles_per_tsc_tick.is_none());
    for row in &report.rows {
        assert!(row.floor_core_cycles_per_envelope.is_none());
        assert!(row.overhead_core_cycles_per_envelope.is_none());
        if cfg!(target_arch = "x86_64") {
            assert!(row.tsc_per_envelope.is_some_and(|t| t > 0.0), "{row:?}");
        }
    }
}

#[test]
fn bad_options_are_errors() {
    let base = OverheadOptions {
        engines: engines(),
        iterations: Some(1),
        repeat: 1,
        floor: false,
        ..OverheadOptions::default()
    };
    for opts in [
        OverheadOptions {
            batches: vec![0],
            ..base.clone()
        },
        OverheadOptions {
            batches: vec![],
            ..base.clone()
        },
        OverheadOptions {
            repeat: 0,
            ..base.clone()
        },
        OverheadOptions {
            iterations: Some(0),
            ..base.clone()
        },
        OverheadOptions {
            engines: vec![],
            ..base.clone()
        },
    ] {
        assert!(overhead::run(&opts, |_| {}).is_err());
    }
}
