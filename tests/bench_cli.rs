//! `densenet-zoo bench --json`: the fields other tools read.

use std::process::Command;

#[test]
fn bench_reports_throughput_flops_and_memory() {
    for mode in ["infer", "train"] {
        let out = Command::new(env!("CARGO_BIN_EXE_densenet-zoo"))
            .args([
                "bench",
                "--variant",
                "d2l",
                "--mode",
                mode,
                "--batch",
                "4",
                "--size",
                "32",
            ])
            .args(["--iters", "3", "--warmup", "1", "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["variant"], "d2l");
        assert_eq!(v["mode"], mode);
        assert_eq!((v["batch"].as_u64(), v["size"].as_u64()), (Some(4), Some(32)));
        let (median, min, max) = (
            v["examples_per_s"].as_f64().unwrap(),
            v["examples_per_s_min"].as_f64().unwrap(),
            v["examples_per_s_max"].as_f64().unwrap(),
        );
        assert!(min > 0.0 && min <= median && median <= max, "{v}");
        assert!(v["gflops"].as_f64().unwrap() > 0.0);
        assert!(v["peak_rss_mib"].as_f64().unwrap() > 1.0);
    }
}
