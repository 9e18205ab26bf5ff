//! The pooled features (the classifier's input) of every image in a folder, written to a
//! safetensors file: `embeddings` (N, F), one row per image, and the files in its metadata.
//!
//! ```sh
//! cargo run --release --example embed -- photos/ embeddings.safetensors --weights hf:timm/densenet121.tv_in1k
//! ```
//!
//! Read it back in Python with `safetensors.torch.load_file("embeddings.safetensors")`.

use std::collections::HashMap;
use std::path::PathBuf;

use densenet_zoo::checkpoint::write_safetensors_with;
use densenet_zoo::data::images_under;
use densenet_zoo::infer::Pretrained;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (folder, out, weights) = match args.as_slice() {
        [folder, out] => (folder, out, "121"),
        [folder, out, flag, weights] if flag == "--weights" => (folder, out, weights.as_str()),
        _ => anyhow::bail!("usage: embed FOLDER OUT.safetensors [--weights W]"),
    };
    // Before the work: a file that cannot be written is refused now, not after it.
    densenet_zoo::checkpoint::check_file(out.as_ref())?;
    let files: Vec<PathBuf> = images_under(folder.as_ref())?;
    anyhow::ensure!(!files.is_empty(), "no image under {folder}");

    let model = Pretrained::open(weights)?;
    let embeddings = model
        .batches(16)
        .on_batch(|p| eprint!("\r{}/{} images", p.done, p.total))
        .embed(&files)?;
    eprintln!();

    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let metadata = HashMap::from([
        ("files".to_string(), serde_json::to_string(&names)?),
        ("weights".to_string(), model.origin().to_string()),
    ]);
    write_safetensors_with(
        out.as_ref(),
        &[("embeddings".into(), embeddings.clone())],
        Some(metadata),
    )?;
    println!("wrote {out}: embeddings {:?}", embeddings.dims());
    Ok(())
}
