//! Weights from the Hugging Face hub through the real `hf-hub` client, against a local server
//! on 127.0.0.1 that serves files in the hub's URL layout and headers: a cache miss downloads,
//! a cache hit makes no request, and `HF_HUB_OFFLINE=1` never touches the network.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::Device;
use densenet_zoo::checkpoint::{state_dict, varmap_tensors, write_safetensors};
use densenet_zoo::VariantSpec;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Serves `files` (URL path → bytes) as the hub does, counting requests; handles at most
/// `limit` connections, then stops.
fn serve(files: Vec<(String, Vec<u8>)>, limit: usize) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(limit) {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            let _ = reader.read_line(&mut request_line);
            let mut range_start = 0usize;
            let mut range_end = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(r) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    let (a, b) = r.trim().split_once('-').unwrap_or(("0", ""));
                    range_start = a.parse().unwrap_or(0);
                    range_end = b.parse::<usize>().ok();
                }
            }
            let path = request_line.split_whitespace().nth(1).unwrap_or("").to_string();
            let response = match files.iter().find(|(p, _)| *p == path) {
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
                Some((_, body)) => {
                    let end = range_end.unwrap_or(body.len() - 1).min(body.len() - 1);
                    let part = &body[range_start..=end];
                    let etag = format!("{:016x}", body.len() as u64 * 2654435761);
                    let mut r = format!(
                        "HTTP/1.1 206 Partial Content\r\nETag: \"{etag}\"\r\nX-Repo-Commit: {COMMIT}\r\n\
                         Content-Range: bytes {range_start}-{end}/{}\r\nContent-Length: {}\r\n\
                         Connection: close\r\n\r\n",
                        body.len(),
                        part.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(part);
                    r
                }
            };
            let _ = stream.write_all(&response);
        }
    });
    (endpoint, count)
}

/// A DenseNet-121 checkpoint in torchvision's names and no metadata, as timm publishes.
fn densenet121_bytes(dir: &Path) -> Vec<u8> {
    let spec = VariantSpec::resolve("121").unwrap();
    let varmap = densenet_zoo::train::seeded_varmap(&spec, 7, &Device::Cpu).unwrap();
    let path = dir.join("timm.safetensors");
    write_safetensors(&path, &state_dict(&spec, &varmap_tensors(&varmap)).unwrap(), None).unwrap();
    std::fs::read(path).unwrap()
}

fn zoo(args: &[&str], hf_home: &Path, endpoint: &str, offline: bool) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_densenet-zoo"));
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("HF_HOME", hf_home)
        .env("HF_ENDPOINT", endpoint);
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HF_TOKEN",
    ] {
        cmd.env_remove(var);
    }
    if offline {
        cmd.env("HF_HUB_OFFLINE", "1");
    } else {
        cmd.env_remove("HF_HUB_OFFLINE");
    }
    cmd.output().unwrap()
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("zoo-hub-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_variants_published_weights_come_from_the_hub_once() {
    let dir = temp("pretrained");
    let body = densenet121_bytes(&dir);
    let (endpoint, requests) = serve(
        vec![(
            "/timm/densenet121.tv_in1k/resolve/main/model.safetensors".into(),
            body.clone(),
        )],
        20,
    );
    let hf_home = dir.join("hf");
    let image = "tests/fixtures/images/chelsea-256.png";

    // Offline with an empty cache: a plain refusal, no request.
    let out = zoo(&["infer", image, "--variant", "121"], &hf_home, &endpoint, true);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("hf:timm/densenet121.tv_in1k:model.safetensors: not in the cache"),
        "{err}"
    );
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
    assert_eq!(requests.load(Ordering::SeqCst), 0);

    // A cache miss downloads into the standard cache layout that Python shares.
    let out = zoo(
        &["infer", image, "--variant", "121", "--json"],
        &hf_home,
        &endpoint,
        false,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["top"].as_array().unwrap().len(), 5);
    let after_miss = requests.load(Ordering::SeqCst);
    assert!(
        after_miss >= 2,
        "metadata and body requests expected, saw {after_miss}"
    );
    let cached = hf_home.join(format!(
        "hub/models--timm--densenet121.tv_in1k/snapshots/{COMMIT}/model.safetensors"
    ));
    assert_eq!(std::fs::read(&cached).unwrap(), body);
    assert_eq!(
        std::fs::read_to_string(hf_home.join("hub/models--timm--densenet121.tv_in1k/refs/main")).unwrap(),
        COMMIT
    );

    // A cache hit makes no request, online or offline, and gives the same answer.
    let again = zoo(
        &[
            "infer",
            image,
            "--weights",
            "hf:timm/densenet121.tv_in1k",
            "--json",
        ],
        &hf_home,
        &endpoint,
        false,
    );
    assert!(again.status.success());
    let offline = zoo(
        &["infer", image, "--variant", "121", "--json"],
        &hf_home,
        &endpoint,
        true,
    );
    assert!(offline.status.success());
    assert_eq!(requests.load(Ordering::SeqCst), after_miss);
    assert_eq!(again.stdout, out.stdout);
    assert_eq!(offline.stdout, out.stdout);
}

#[test]
fn a_missing_repo_file_is_a_clear_error() {
    let dir = temp("missing");
    let (endpoint, _) = serve(vec![], 10);
    let out = zoo(
        &[
            "export",
            "--weights",
            "hf:someone/nothing-here",
            "--out",
            dir.join("x.safetensors").to_str().unwrap(),
        ],
        &dir.join("hf"),
        &endpoint,
        false,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: checkpoint hf:someone/nothing-here:model.safetensors: download failed"),
        "{err}"
    );
}
