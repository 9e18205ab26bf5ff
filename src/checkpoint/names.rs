//! Naming schemes: the names other tools give DenseNet tensors, and the mapping to ours.
//!
//! Ours are torchvision's (`features.denseblock1.denselayer1.norm1.weight`), which timm's hub
//! files use too. Three other schemes are found in the wild:
//! - torchvision's legacy `.pth` files: `features.denseblock1.denselayer1.norm.1.weight`;
//! - the book's first edition, an `nn.Sequential`: `0.0.weight` (stem conv), `1.net.0.0.weight`
//!   (block 1, layer 1, norm), `2.2.weight` (transition 1, conv), ..., then the last norm and
//!   the `Linear`;
//! - the book's current edition (8.7), a `DenseNet` class whose `net` has named children:
//!   `net.0.0.weight` (stem conv), `net.dense_blk1.net.0.0.weight` (block 1, layer 1, norm),
//!   `net.tran_blk1.2.weight` (transition 1, conv), `net.last.0` (last norm), `net.last.4`
//!   (the `Linear`); the inner `net`'s own state dict has the same names without `net.`.
//!
//! Training frameworks put a prefix before every name (`module.` for DataParallel, `model.`
//! for Lightning, `_orig_mod.` for `torch.compile`, ...): a prefix that every name shares is
//! stripped when the names without it are a known scheme's.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::FieldError;

/// A family of tensor names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamingScheme {
    /// torchvision's (and timm's) current names: the canonical ones.
    Torchvision,
    /// torchvision's legacy names, with `norm.1` for `norm1` inside dense layers.
    TorchvisionLegacy,
    /// The book's first-edition `nn.Sequential` state dict.
    D2l,
    /// The book's current-edition `DenseNet` (`net.dense_blk1...`), or its inner `net`.
    D2lCurrent,
}

impl NamingScheme {
    /// Detects the scheme from a set of names (after any wrapper's prefix is removed).
    pub fn detect<'a>(names: impl IntoIterator<Item = &'a str>) -> NamingScheme {
        let mut scheme = NamingScheme::Torchvision;
        let names: Vec<&str> = names.into_iter().collect();
        let current = |n: &&str| {
            let rest = n.strip_prefix("net.").unwrap_or(n);
            ["dense_blk", "tran_blk", "last."]
                .iter()
                .any(|p| rest.starts_with(p))
        };
        if names.iter().any(current) {
            return NamingScheme::D2lCurrent;
        }
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

/// A name of the book's current edition (`net.dense_blk1.net.0.2.weight`, with or without the
/// leading `net.`) → ours; `None` for any other name.
fn d2l_current_to_canonical(name: &str) -> Option<String> {
    let rest = name.strip_prefix("net.").unwrap_or(name);
    let (module, leaf) = split_leaf(rest);
    let parts: Vec<&str> = module.split('.').collect();
    let number = |s: &str, prefix: &str| s.strip_prefix(prefix).and_then(|n| n.parse::<usize>().ok());
    let ours = match parts.as_slice() {
        [block, "net", layer, unit @ ("0" | "2")] => format!(
            "features.denseblock{}.denselayer{}.{}",
            number(block, "dense_blk")?,
            layer.parse::<usize>().ok()? + 1,
            if *unit == "0" { "norm1" } else { "conv1" }
        ),
        [transition, unit @ ("0" | "2")] if transition.starts_with("tran_blk") => format!(
            "features.transition{}.{}",
            number(transition, "tran_blk")?,
            if *unit == "0" { "norm" } else { "conv" }
        ),
        ["last", "0"] => "features.norm5".into(),
        ["last", "4"] => "classifier".into(),
        ["0", "0"] => "features.conv0".into(),
        ["0", "1"] => "features.norm0".into(),
        _ => return None,
    };
    Some(format!("{ours}.{leaf}"))
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

/// Tensors renamed to the canonical scheme, and how.
#[derive(Debug)]
pub struct Canonical<T> {
    /// The scheme the names were in.
    pub scheme: NamingScheme,
    /// The prefix that was stripped (`module.`, `model.`, ...), if any.
    pub stripped_prefix: Option<String>,
    /// The names that did not carry that prefix, kept as they were (a loss's weight saved
    /// beside a Lightning module's `model.*`); empty when every name carried it.
    pub without_prefix: Vec<String>,
    /// The tensors under canonical names; names no scheme knows are kept as they were.
    pub tensors: Vec<(String, T)>,
}

/// Renames every tensor to the canonical scheme. A training wrapper's prefix of whole
/// dot-separated segments, shared by every name or by most of them, is stripped (from the names
/// that carry it) when more names are then known (canonical after renaming): of the prefixes
/// that make the most names known, the one shared by the most names, then the shortest. Names
/// that no scheme knows are kept as they are, so that strict checking reports them as
/// unexpected.
pub fn to_canonical<T>(tensors: Vec<(String, T)>) -> Canonical<T> {
    let (names, values): (Vec<String>, Vec<T>) = tensors.into_iter().unzip();
    let mut best: Option<(usize, String, NamingScheme, Vec<String>)> = None;
    for prefix in candidate_prefixes(&names) {
        let stripped: Vec<&str> = names
            .iter()
            .map(|n| n.strip_prefix(prefix.as_str()).unwrap_or(n))
            .collect();
        let (scheme, renamed) = rename(&stripped);
        let known = renamed.iter().filter(|n| is_canonical(n)).count();
        if best.as_ref().is_none_or(|(k, ..)| known > *k) {
            best = Some((known, prefix, scheme, renamed));
        }
    }
    let (_, prefix, scheme, renamed) = best.expect("the empty prefix is always tried");
    let without_prefix = if prefix.is_empty() {
        Vec::new()
    } else {
        names
            .iter()
            .filter(|n| !n.starts_with(&prefix))
            .cloned()
            .collect()
    };
    Canonical {
        scheme,
        stripped_prefix: (!prefix.is_empty()).then_some(prefix),
        without_prefix,
        tensors: renamed.into_iter().zip(values).collect(),
    }
}

/// The prefixes to try: none, then every prefix of whole segments (`a.`, `a.b.`, up to three
/// segments) that more than half of the names carry (with something after it), those that
/// every name carries first, each group shortest first.
fn candidate_prefixes(names: &[String]) -> Vec<String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for name in names {
        for (i, _) in name.match_indices('.').take(3) {
            if i + 1 < name.len() {
                *counts.entry(&name[..=i]).or_default() += 1;
            }
        }
    }
    let mut shared: Vec<(&str, usize)> = counts.into_iter().filter(|&(_, n)| 2 * n > names.len()).collect();
    shared.sort_by_key(|&(p, n)| (std::cmp::Reverse(n), p.len()));
    std::iter::once(String::new())
        .chain(shared.into_iter().map(|(p, _)| p.to_string()))
        .collect()
}

/// A canonical name: `features.*` or the classifier's.
fn is_canonical(name: &str) -> bool {
    name.starts_with("features.") || name.starts_with("classifier.")
}

/// Detects the scheme of `names` and renames them to the canonical scheme.
fn rename(names: &[&str]) -> (NamingScheme, Vec<String>) {
    let scheme = NamingScheme::detect(names.iter().copied());
    let renamed = match scheme {
        NamingScheme::Torchvision => names.iter().map(|n| n.to_string()).collect(),
        NamingScheme::TorchvisionLegacy => names
            .iter()
            .map(|n| legacy_to_canonical(n).unwrap_or_else(|| n.to_string()))
            .collect(),
        NamingScheme::D2l => {
            let table = d2l_table(&d2l_block_config(names.iter().copied()));
            names
                .iter()
                .map(|n| {
                    let (module, leaf) = split_leaf(n);
                    table
                        .get(module)
                        .map(|m| format!("{m}.{leaf}"))
                        .unwrap_or_else(|| n.to_string())
                })
                .collect()
        }
        NamingScheme::D2lCurrent => names
            .iter()
            .map(|n| d2l_current_to_canonical(n).unwrap_or_else(|| n.to_string()))
            .collect(),
    };
    (scheme, renamed)
}

/// Renames canonical tensors to the names of the book's current-edition `DenseNet` class
/// (`net.0.0.weight`, `net.dense_blk1.net.0.0.weight`, ..., `net.last.4.bias`): the inverse of
/// reading that scheme. The error names the first tensor that has no place in it.
pub fn canonical_to_d2l_current<T>(tensors: Vec<(String, T)>) -> Result<Vec<(String, T)>, FieldError> {
    tensors
        .into_iter()
        .map(|(n, t)| {
            let (module, leaf) = split_leaf(&n);
            let parts: Vec<&str> = module.split('.').collect();
            let number = |s: &str, prefix: &str| s.strip_prefix(prefix).and_then(|n| n.parse::<usize>().ok());
            let book = match parts.as_slice() {
                ["features", "conv0"] => Some("0.0".to_string()),
                ["features", "norm0"] => Some("0.1".to_string()),
                ["features", block, layer, unit @ ("norm1" | "conv1")] => number(block, "denseblock")
                    .zip(number(layer, "denselayer"))
                    .map(|(b, l)| {
                        format!(
                            "dense_blk{b}.net.{}.{}",
                            l - 1,
                            if *unit == "norm1" { 0 } else { 2 }
                        )
                    }),
                ["features", transition, unit @ ("norm" | "conv")] => number(transition, "transition")
                    .map(|t| format!("tran_blk{t}.{}", if *unit == "norm" { 0 } else { 2 })),
                ["features", "norm5"] => Some("last.0".to_string()),
                ["classifier"] => Some("last.4".to_string()),
                _ => None,
            };
            match book {
                Some(b) => Ok((format!("net.{b}.{leaf}"), t)),
                None => Err(FieldError::new(
                    n.clone(),
                    format!("tensor {n} has no place in the book's current DenseNet class"),
                )),
            }
        })
        .collect()
}

/// Renames canonical tensors to the book's `nn.Sequential` names for a net with `block_config`.
/// Every name must have a place in the book's layout; the error names the first that does not.
pub fn canonical_to_d2l<T>(
    tensors: Vec<(String, T)>,
    block_config: &[usize],
) -> Result<Vec<(String, T)>, FieldError> {
    let reverse: BTreeMap<String, String> =
        d2l_table(block_config).into_iter().map(|(d, c)| (c, d)).collect();
    tensors
        .into_iter()
        .map(|(n, t)| {
            let (module, leaf) = split_leaf(&n);
            match reverse.get(module) {
                Some(d) => Ok((format!("{d}.{leaf}"), t)),
                None => Err(FieldError::new(
                    n.clone(),
                    format!("tensor {n} has no place in the book's nn.Sequential layout"),
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
        let Canonical {
            scheme, tensors: out, ..
        } = to_canonical(names(&[
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
        let Canonical {
            scheme,
            tensors: canonical,
            ..
        } = to_canonical(book.clone());
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
    fn a_prefix_every_name_shares_is_stripped_when_it_hides_a_scheme() {
        for prefix in [
            "module.",
            "model.",
            "_orig_mod.",
            "model.module.",
            "backbone.encoder.",
        ] {
            let out = to_canonical(names(&[
                &format!("{prefix}features.conv0.weight"),
                &format!("{prefix}features.denseblock1.denselayer1.norm.1.weight"),
                &format!("{prefix}classifier.bias"),
            ]));
            assert_eq!(out.scheme, NamingScheme::TorchvisionLegacy, "{prefix}");
            assert_eq!(out.stripped_prefix.as_deref(), Some(prefix));
            assert_eq!(out.tensors[1].0, "features.denseblock1.denselayer1.norm1.weight");
        }
        // `features.` itself is shared by these names but is part of the scheme.
        let out = to_canonical(names(&["features.conv0.weight", "features.norm0.bias"]));
        assert_eq!(out.stripped_prefix, None);
        // A prefix that reveals nothing known is kept.
        let out = to_canonical(names(&["head.fc.weight", "head.fc.bias"]));
        assert_eq!(out.stripped_prefix, None);
        assert_eq!(out.tensors[0].0, "head.fc.weight");
        // A prefix most names carry is stripped from those; the others stay, and are said.
        let out = to_canonical(names(&[
            "model.features.conv0.weight",
            "model.features.norm0.weight",
            "model.classifier.bias",
            "criterion.weight",
        ]));
        assert_eq!(out.stripped_prefix.as_deref(), Some("model."));
        assert_eq!(out.without_prefix, ["criterion.weight"]);
        let got: Vec<&str> = out.tensors.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            got,
            [
                "features.conv0.weight",
                "features.norm0.weight",
                "classifier.bias",
                "criterion.weight"
            ]
        );
    }

    #[test]
    fn the_books_current_edition_is_renamed_with_or_without_net() {
        let current = [
            ("net.0.0.weight", "features.conv0.weight"),
            ("net.0.0.bias", "features.conv0.bias"),
            ("net.0.1.running_mean", "features.norm0.running_mean"),
            (
                "net.dense_blk1.net.0.0.weight",
                "features.denseblock1.denselayer1.norm1.weight",
            ),
            (
                "net.dense_blk1.net.1.2.bias",
                "features.denseblock1.denselayer2.conv1.bias",
            ),
            ("net.tran_blk1.0.weight", "features.transition1.norm.weight"),
            ("net.tran_blk1.2.weight", "features.transition1.conv.weight"),
            (
                "net.dense_blk2.net.0.2.weight",
                "features.denseblock2.denselayer1.conv1.weight",
            ),
            ("net.last.0.running_var", "features.norm5.running_var"),
            ("net.last.4.weight", "classifier.weight"),
        ];
        let full: Vec<&str> = current.iter().map(|(n, _)| *n).collect();
        let inner: Vec<&str> = full.iter().map(|n| &n[4..]).collect();
        for list in [full.clone(), inner] {
            let out = to_canonical(names(&list));
            assert_eq!(out.scheme, NamingScheme::D2lCurrent);
            assert_eq!(out.stripped_prefix, None);
            let got: Vec<String> = out.tensors.into_iter().map(|(n, _)| n).collect();
            let want: Vec<&str> = current.iter().map(|(_, c)| *c).collect();
            assert_eq!(got, want);
        }
        // And back: the whole model's names.
        let canonical = names(&current.iter().map(|(_, c)| *c).collect::<Vec<_>>());
        let back: Vec<String> = canonical_to_d2l_current(canonical)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(back, full);
    }
}
