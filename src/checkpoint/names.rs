//! Naming schemes: the names other tools give DenseNet tensors, and the mapping to ours.
//!
//! Ours are torchvision's (`features.denseblock1.denselayer1.norm1.weight`), which timm's hub
//! files use too. Two other schemes are found in the wild:
//! - torchvision's legacy `.pth` files: `features.denseblock1.denselayer1.norm.1.weight`;
//! - the book's `nn.Sequential`: `0.0.weight` (stem conv), `1.net.0.0.weight` (block 1, layer 1,
//!   norm), `2.2.weight` (transition 1, conv), ..., then the last norm and the `Linear`.

use std::collections::{BTreeMap, BTreeSet};

/// A family of tensor names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamingScheme {
    /// torchvision's (and timm's) current names: the canonical ones.
    Torchvision,
    /// torchvision's legacy names, with `norm.1` for `norm1` inside dense layers.
    TorchvisionLegacy,
    /// The book's `nn.Sequential` state dict.
    D2l,
}

impl NamingScheme {
    /// Detects the scheme from a set of names (after any `module.` prefix is removed).
    pub fn detect<'a>(names: impl IntoIterator<Item = &'a str>) -> NamingScheme {
        let mut scheme = NamingScheme::Torchvision;
        for name in names {
            if name.split('.').next().is_some_and(|s| s.parse::<usize>().is_ok()) {
                return NamingScheme::D2l;
            }
            if legacy_to_canonical(name).is_some() {
                scheme = NamingScheme::TorchvisionLegacy;
            }
        }
        scheme
    }
}

/// `...denselayer3.norm.1.weight` → `...denselayer3.norm1.weight`, as torchvision's loader does;
/// `None` when `name` is not a legacy name.
fn legacy_to_canonical(name: &str) -> Option<String> {
    let parts: Vec<&str> = name.split('.').collect();
    let i = parts.windows(3).position(|w| {
        w[0].starts_with("denselayer")
            && matches!(w[1], "norm" | "relu" | "conv")
            && matches!(w[2], "1" | "2")
    })?;
    let mut out: Vec<String> = parts[..=i].iter().map(|s| s.to_string()).collect();
    out.push(format!("{}{}", parts[i + 1], parts[i + 2]));
    out.extend(parts[i + 3..].iter().map(|s| s.to_string()));
    Some(out.join("."))
}

/// Where each module of the book's `nn.Sequential` sits, for a net with `block_config`.
/// Maps the book's module prefix (`1.net.0.0`) to ours (`features.denseblock1.denselayer1.norm1`).
fn d2l_table(block_config: &[usize]) -> BTreeMap<String, String> {
    let mut table = BTreeMap::new();
    table.insert("0.0".to_string(), "features.conv0".to_string());
    table.insert("0.1".to_string(), "features.norm0".to_string());
    let mut index = 1;
    for (b, &layers) in block_config.iter().enumerate() {
        let block = format!("features.denseblock{}", b + 1);
        for l in 0..layers {
            table.insert(
                format!("{index}.net.{l}.0"),
                format!("{block}.denselayer{}.norm1", l + 1),
            );
            table.insert(
                format!("{index}.net.{l}.2"),
                format!("{block}.denselayer{}.conv1", l + 1),
            );
        }
        index += 1;
        if b + 1 < block_config.len() {
            table.insert(format!("{index}.0"), format!("features.transition{}.norm", b + 1));
            table.insert(format!("{index}.2"), format!("features.transition{}.conv", b + 1));
            index += 1;
        }
    }
    // Then BatchNorm2d, ReLU, AdaptiveAvgPool2d, Flatten, Linear.
    table.insert(format!("{index}"), "features.norm5".to_string());
    table.insert(format!("{}", index + 4), "classifier".to_string());
    table
}

/// The book's block config, read off its names: the number of `net.{l}` layers per block.
fn d2l_block_config<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<usize> {
    let mut layers: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for name in names {
        let parts: Vec<&str> = name.split('.').collect();
        if let [index, "net", layer, ..] = parts.as_slice() {
            if let (Ok(index), Ok(layer)) = (index.parse(), layer.parse()) {
                layers.entry(index).or_default().insert(layer);
            }
        }
    }
    layers.values().map(|l| l.len()).collect()
}

/// Splits `prefix.leaf` at the last dot.
fn split_leaf(name: &str) -> (&str, &str) {
    name.rsplit_once('.').unwrap_or(("", name))
}

/// Renames every tensor to the canonical scheme. Names that the scheme does not know are kept
/// as they are, so that strict checking reports them as unexpected.
pub fn to_canonical<T>(tensors: Vec<(String, T)>) -> (NamingScheme, Vec<(String, T)>) {
    let tensors: Vec<(String, T)> = tensors
        .into_iter()
        .map(|(n, t)| (n.strip_prefix("module.").map(str::to_string).unwrap_or(n), t))
        .collect();
    let scheme = NamingScheme::detect(tensors.iter().map(|(n, _)| n.as_str()));
    let renamed = match scheme {
        NamingScheme::Torchvision => tensors,
        NamingScheme::TorchvisionLegacy => tensors
            .into_iter()
            .map(|(n, t)| (legacy_to_canonical(&n).unwrap_or(n), t))
            .collect(),
        NamingScheme::D2l => {
            let table = d2l_table(&d2l_block_config(tensors.iter().map(|(n, _)| n.as_str())));
            tensors
                .into_iter()
                .map(|(n, t)| {
                    let (module, leaf) = split_leaf(&n);
                    let renamed = table.get(module).map(|m| format!("{m}.{leaf}"));
                    (renamed.unwrap_or(n), t)
                })
                .collect()
        }
    };
    (scheme, renamed)
}

/// Renames canonical tensors to the book's `nn.Sequential` names for a net with `block_config`.
/// Every name must have a place in the book's layout; the error names the first that does not.
pub fn canonical_to_d2l<T>(
    tensors: Vec<(String, T)>,
    block_config: &[usize],
) -> Result<Vec<(String, T)>, String> {
    let reverse: BTreeMap<String, String> =
        d2l_table(block_config).into_iter().map(|(d, c)| (c, d)).collect();
    tensors
        .into_iter()
        .map(|(n, t)| {
            let (module, leaf) = split_leaf(&n);
            match reverse.get(module) {
                Some(d) => Ok((format!("{d}.{leaf}"), t)),
                None => Err(format!(
                    "tensor {n} has no place in the book's nn.Sequential layout"
                )),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<(String, ())> {
        list.iter().map(|n| (n.to_string(), ())).collect()
    }

    #[test]
    fn legacy_names_are_remapped_like_torchvision() {
        let (scheme, out) = to_canonical(names(&[
            "features.conv0.weight",
            "features.denseblock1.denselayer1.norm.1.weight",
            "features.denseblock1.denselayer1.conv.2.weight",
            "features.transition1.norm.weight",
        ]));
        assert_eq!(scheme, NamingScheme::TorchvisionLegacy);
        let out: Vec<String> = out.into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            out,
            [
                "features.conv0.weight",
                "features.denseblock1.denselayer1.norm1.weight",
                "features.denseblock1.denselayer1.conv2.weight",
                "features.transition1.norm.weight"
            ]
        );
    }

    #[test]
    fn book_names_round_trip() {
        let book = names(&[
            "0.0.weight",
            "0.1.running_var",
            "1.net.0.0.weight",
            "1.net.1.2.bias",
            "2.0.weight",
            "2.2.weight",
            "3.net.0.0.bias",
            "3.net.1.2.weight",
            "4.weight",
            "8.bias",
        ]);
        let (scheme, canonical) = to_canonical(book.clone());
        assert_eq!(scheme, NamingScheme::D2l);
        let got: Vec<&str> = canonical.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            got,
            [
                "features.conv0.weight",
                "features.norm0.running_var",
                "features.denseblock1.denselayer1.norm1.weight",
                "features.denseblock1.denselayer2.conv1.bias",
                "features.transition1.norm.weight",
                "features.transition1.conv.weight",
                "features.denseblock2.denselayer1.norm1.bias",
                "features.denseblock2.denselayer2.conv1.weight",
                "features.norm5.weight",
                "classifier.bias"
            ]
        );
        assert_eq!(canonical_to_d2l(canonical, &[2, 2]).unwrap(), book);
    }

    #[test]
    fn a_dataparallel_prefix_is_dropped() {
        let (scheme, out) = to_canonical(names(&["module.features.conv0.weight"]));
        assert_eq!(scheme, NamingScheme::Torchvision);
        assert_eq!(out[0].0, "features.conv0.weight");
    }
}
