//! `densenet-zoo export`: any checkpoint in, canonical safetensors out, loadable by
//! `torchvision.models.densenetXXX().load_state_dict(..., strict=True)`.

use std::path::PathBuf;

use candle_core::Device;
use densenet_zoo::checkpoint::{export_state_dict, write_safetensors, Checkpoint, Metadata, NamingScheme};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Format {
    /// torchvision's (and timm's) names.
    Torchvision,
    /// The book's first-edition `nn.Sequential` names (`0.0.weight`, `1.net.0.0.weight`, ...).
    D2l,
    /// The book's current-edition `DenseNet` class (`net.0.0.weight`,
    /// `net.dense_blk1.net.0.0.weight`, ..., `net.last.4.weight`), for `load_state_dict` on the
    /// whole model.
    D2lCurrent,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Input: a .safetensors or .pth file, or hf:OWNER/REPO[:FILE].
    #[arg(long)]
    weights: String,
    /// Output .safetensors file (written atomically).
    #[arg(long)]
    out: PathBuf,
    /// Variant name or JSON spec [default: the input's metadata, else detected from its tensors].
    #[arg(long)]
    variant: Option<String>,
    #[command(flatten)]
    state_dict: super::weights::StateDictArgs,
    /// Naming scheme of the output.
    #[arg(long, value_enum, default_value = "torchvision")]
    format: Format,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    densenet_zoo::checkpoint::check_file(&args.out)?;
    // A tabular net is refused as such before the file is read.
    if let Some(v) = &args.variant {
        densenet_zoo::Variant::resolve_image(v)?;
    }
    let mut ckpt = Checkpoint::open_with(&args.weights, &Device::Cpu, &args.state_dict.key())?;
    let spec = ckpt.spec(args.variant.as_deref())?;
    let adapted = ckpt.adapt(&spec, false)?;
    for notice in ckpt.notices.iter().chain(&adapted) {
        say!("note: {notice}");
    }
    ckpt.check(&spec)?;
    anyhow::ensure!(
        matches!(args.format, Format::Torchvision) || spec.architecture.has_book_layout(),
        "--format {} needs the book's layout (plain layers, ImageNet stem, conv biases); {} is not",
        format_name(args.format),
        spec.name
    );
    let scheme = match args.format {
        Format::Torchvision => NamingScheme::Torchvision,
        Format::D2l => NamingScheme::D2l,
        Format::D2lCurrent => NamingScheme::D2lCurrent,
    };
    let tensors = export_state_dict(&spec, &ckpt.tensors, scheme)?;
    let mut metadata = Metadata::for_spec(&spec);
    if let Some(old) = ckpt
        .metadata
        .filter(|m| m.spec.architecture.num_classes == spec.architecture.num_classes)
    {
        metadata.classes = old.classes;
        metadata.training = old.training;
    }
    write_safetensors(&args.out, &tensors, Some(&metadata))?;
    if !spec.architecture.transition_pool.is_avg() {
        say!(
            "note: {}'s transitions max-pool; torchvision's DenseNet and the book's code average: \
             load these weights into a model whose transitions end in MaxPool2d(2, 2) after the conv",
            spec.name
        );
    }
    say!(
        "wrote {} ({} tensors of {}, {} names, read as {:?})",
        args.out.display(),
        tensors.len(),
        spec.name,
        format_name(args.format),
        ckpt.scheme
    );
    Ok(())
}

fn format_name(format: Format) -> &'static str {
    match format {
        Format::Torchvision => "torchvision",
        Format::D2l => "d2l",
        Format::D2lCurrent => "d2l-current",
    }
}
