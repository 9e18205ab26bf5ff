//! Weights from the Hugging Face hub through the real `hf-hub` client, against a local server
//! on 127.0.0.1 that serves files in the hub's URL layout and headers: a cache miss downloads,
//! a cache hit makes no request, and `HF_HUB_OFFLINE=1` never touches the network.

mod common;
#[path = "common/hub_server.rs"]
mod hub_server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::Ordering;

use candle_core::Device;
use densenet_zoo::checkpoint::hub::HubSettings;
use densenet_zoo::checkpoint::{state_dict, varmap_tensors, write_safetensors};
use densenet_zoo::VariantSpec;
use hub_server::{serve, Cut, COMMIT};
use sha2::{Digest, Sha256};

/// A DenseNet-121 checkpoint in torchvision's names and no metadata, as timm publishes.
fn densenet121_bytes(dir: &Path) -> Vec<u8> {
    let spec = VariantSpec::resolve("121").unwrap();
    let varmap = densenet_zoo::train::seeded_varmap(&spec, 7, &Device::Cpu).unwrap();
    let path = dir.join("timm.safetensors");
    write_safetensors(&path, &state_dict(&spec, &varmap_tensors(&varmap)).unwrap(), None).unwrap();
    std::fs::read(path).unwrap()
}

fn zoo(args: &[&str], hf_home: &Path, endpoint: &str, offline: bool) -> Output {
    zoo_with(args, hf_home, endpoint, offline, &[])
}

/// [`zoo`] with more environment variables set; every other hub variable is unset.
fn zoo_with(args: &[&str], hf_home: &Path, endpoint: &str, offline: bool, vars: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_densenet-zoo"));
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("HF_HOME", hf_home)
        .env("HF_ENDPOINT", endpoint);
    for var in [
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_TOKEN_PATH",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN",
        "TRANSFORMERS_OFFLINE",
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
    cmd.envs(vars.iter().copied());
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
    let (endpoint, seen) = serve(
        vec![(
            "/timm/densenet121.tv_in1k/resolve/main/model.safetensors".into(),
            body.clone(),
        )],
        20,
        Cut::Never,
    );
    let requests = &seen.requests;
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
    let (endpoint, _) = serve(vec![], 10, Cut::Never);
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
    assert!(
        err.contains(
            "(not found: no such repository, or no such file in it (FILE defaults to model.safetensors))"
        ),
        "{err}"
    );
}

/// The cached copy of the test repository's file, where the hub layout puts it.
fn cached_file(hf_home: &Path) -> PathBuf {
    hf_home.join(format!(
        "hub/models--timm--densenet121.tv_in1k/snapshots/{COMMIT}/model.safetensors"
    ))
}

#[test]
fn a_cut_download_leaves_nothing_corrupt_and_the_next_run_resumes_it() {
    let dir = temp("cut");
    let body = densenet121_bytes(&dir);
    let file = "/timm/densenet121.tv_in1k/resolve/main/model.safetensors";
    let cut_at = body.len() / 3;
    let (endpoint, seen) = serve(vec![(file.into(), body.clone())], 20, Cut::WithLength(cut_at));
    let hf_home = dir.join("hf");
    let args = [
        "infer",
        "tests/fixtures/images/chelsea-256.png",
        "--variant",
        "121",
        "--json",
    ];

    let cut = zoo(&args, &hf_home, &endpoint, false);
    assert!(!cut.status.success());
    let err = String::from_utf8_lossy(&cut.stderr);
    assert!(
        err.contains("hf:timm/densenet121.tv_in1k:model.safetensors: download failed")
            && err.contains("run again to resume it"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        !cached_file(&hf_home).exists(),
        "a partial file is in the snapshot"
    );

    // The next run asks only for the bytes it lacks, and ends with the whole file.
    let done = zoo(&args, &hf_home, &endpoint, false);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert_eq!(*seen.body_starts.lock().unwrap(), [0, cut_at]);
    assert_eq!(std::fs::read(cached_file(&hf_home)).unwrap(), body);
}

#[test]
fn a_download_cut_without_a_length_is_caught_by_its_hash_and_removed() {
    let dir = temp("cut-no-length");
    let body = densenet121_bytes(&dir);
    let file = "/timm/densenet121.tv_in1k/resolve/main/model.safetensors";
    let (endpoint, seen) = serve(
        vec![(file.into(), body.clone())],
        20,
        Cut::WithoutLength(body.len() / 2),
    );
    let hf_home = dir.join("hf");
    let args = [
        "infer",
        "tests/fixtures/images/chelsea-256.png",
        "--variant",
        "121",
        "--json",
    ];

    // hf-hub takes the short body for the whole file; the SHA-256 check refuses and removes it.
    let cut = zoo(&args, &hf_home, &endpoint, false);
    assert!(!cut.status.success());
    let err = String::from_utf8_lossy(&cut.stderr);
    let expected = format!(
        "download corrupt: {} bytes with SHA-256 {:x}, expected {:x}; removed from the cache",
        body.len() / 2,
        Sha256::digest(&body[..body.len() / 2]),
        Sha256::digest(&body)
    );
    assert!(err.contains(&expected), "{err}");
    assert!(!cached_file(&hf_home).exists());
    let blobs = hf_home.join("hub/models--timm--densenet121.tv_in1k/blobs");
    let kept: Vec<_> = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| !name.ends_with(".lock"))
        .collect();
    assert!(kept.is_empty(), "a corrupt blob stayed: {kept:?}");

    let done = zoo(&args, &hf_home, &endpoint, false);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert_eq!(*seen.body_starts.lock().unwrap(), [0, 0]);
    assert_eq!(std::fs::read(cached_file(&hf_home)).unwrap(), body);
}

/// The fixtures of make_hf_hub_fixtures.py, written by Python's huggingface_hub.
fn python_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf_hub")
}

#[test]
fn hub_settings_are_read_from_the_environment_as_pythons_client_reads_them() {
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(python_fixtures().join("settings.json")).unwrap())
            .unwrap();
    let token_dir = temp("token-dir");
    std::fs::write(token_dir.join("token"), "  tok-from-file\n").unwrap();
    let token_dir = token_dir.to_str().unwrap();
    for case in fixture["cases"].as_array().unwrap() {
        let mut env: std::collections::HashMap<String, String> = [
            ("HOME".to_string(), fixture["home"].as_str().unwrap().to_string()),
            ("TOKEN_DIR".to_string(), token_dir.to_string()),
        ]
        .into();
        for (k, v) in case["env"].as_object().unwrap() {
            env.insert(k.clone(), v.as_str().unwrap().to_string());
        }
        let ours = HubSettings::from_vars(|name| env.get(name).cloned());
        let python = &case["python"];
        let path = |key: &str| python[key].as_str().unwrap().replace("$TOKEN_DIR", token_dir);
        let what = &case["env"];
        assert_eq!(ours.cache.display().to_string(), path("cache"), "cache, {what}");
        assert_eq!(
            ours.token_path.display().to_string(),
            path("token_path"),
            "token path, {what}"
        );
        assert_eq!(
            ours.endpoint,
            python["endpoint"].as_str().unwrap(),
            "endpoint, {what}"
        );
        assert_eq!(
            ours.offline,
            python["offline"].as_bool().unwrap(),
            "offline, {what}"
        );
        assert_eq!(ours.token.as_deref(), python["token"].as_str(), "token, {what}");
    }
}

/// Copies a folder, links as links (a hub cache's snapshots are links to its blobs).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().unwrap();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src).unwrap(), &dst).unwrap();
        } else if kind.is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

#[test]
fn a_cache_that_pythons_client_wrote_is_found_offline() {
    let dir = temp("python-cache");
    let cache = dir.join("python-cache");
    copy_tree(&python_fixtures().join("cache"), &cache);
    let out = dir.join("out.safetensors");
    // HF_HUB_CACHE wins over HF_HOME, whose cache is empty; no server at all.
    let result = zoo_with(
        &[
            "export",
            "--weights",
            "hf:densenet-zoo/tiny-bottleneck",
            "--out",
            out.to_str().unwrap(),
        ],
        &dir.join("empty-home"),
        "http://127.0.0.1:9",
        true,
        &[("HF_HUB_CACHE", cache.to_str().unwrap())],
    );
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let fixture = common::Fixture::load("tiny_bottleneck");
    let exported = densenet_zoo::checkpoint::Checkpoint::read(&out, &Device::Cpu).unwrap();
    for (name, want) in fixture.state() {
        let got = &exported.tensors[&name];
        assert_eq!(
            got.flatten_all()
                .unwrap()
                .to_dtype(candle_core::DType::F64)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap(),
            want.flatten_all()
                .unwrap()
                .to_dtype(candle_core::DType::F64)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap(),
            "{name}"
        );
    }
}

#[test]
fn our_downloads_take_pythons_layout_and_send_the_token() {
    let dir = temp("layout");
    let python_cache = python_fixtures().join("cache/models--densenet-zoo--tiny-bottleneck");
    let body = std::fs::read(
        python_cache
            .join("blobs")
            .read_dir()
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
    )
    .unwrap();
    let (endpoint, seen) = serve(
        vec![(
            "/densenet-zoo/tiny-bottleneck/resolve/main/model.safetensors".into(),
            body.clone(),
        )],
        10,
        Cut::Never,
    );
    let cache = dir.join("cache");
    std::fs::write(dir.join("my-token"), "hf_secret_from_file\n").unwrap();
    let result = zoo_with(
        &[
            "export",
            "--weights",
            "hf:densenet-zoo/tiny-bottleneck",
            "--out",
            dir.join("out.safetensors").to_str().unwrap(),
        ],
        &dir.join("home"),
        &endpoint,
        false,
        &[
            ("HF_HUB_CACHE", cache.to_str().unwrap()),
            ("HF_TOKEN_PATH", dir.join("my-token").to_str().unwrap()),
        ],
    );
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let auth = seen.authorization.lock().unwrap().clone();
    assert!(
        !auth.is_empty() && auth.iter().all(|a| a.ends_with("Bearer hf_secret_from_file")),
        "{auth:?}"
    );

    // The same files as Python's client writes: refs/main, the blob named by its SHA-256, and
    // the snapshot entry a relative link to it.
    let ours = cache.join("models--densenet-zoo--tiny-bottleneck");
    let sha = format!("{:x}", Sha256::digest(&body));
    assert_eq!(std::fs::read(ours.join("blobs").join(&sha)).unwrap(), body);
    let blobs: Vec<_> = std::fs::read_dir(ours.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        blobs,
        [std::ffi::OsString::from(&sha)],
        "only the blob, no lock file"
    );
    assert!(python_cache.join("blobs").join(&sha).exists());
    assert_eq!(std::fs::read_to_string(ours.join("refs/main")).unwrap(), COMMIT);
    let link = |root: &Path, commit: &str| {
        std::fs::read_link(root.join(format!("snapshots/{commit}/model.safetensors"))).unwrap()
    };
    let python_commit = std::fs::read_to_string(python_cache.join("refs/main")).unwrap();
    assert_eq!(link(&ours, COMMIT), link(&python_cache, &python_commit));
}
