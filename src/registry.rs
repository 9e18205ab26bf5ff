//! One registry of variants of both kinds, by name or spec file: the image DenseNets of
//! [`VariantSpec`] and the tabular nets of [`MlpSpec`]. It sits above both, so that neither
//! knows the other.

use crate::error::{Error, Result};
use crate::spec::VariantSpec;
use crate::tabular::MlpSpec;

/// A variant of either kind.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // resolved once per command: no collection of these
pub enum Variant {
    /// A DenseNet for images.
    Image(VariantSpec),
    /// A net for rows of tabular data (the house-price task).
    Tabular(MlpSpec),
}

impl Variant {
    /// A built-in name or alias of either kind (`121`, `d2l`, `dense-mlp`), or a JSON spec
    /// file of either kind (a tabular one has `connectivity`).
    ///
    /// # Errors
    /// [`Error::UnknownVariant`] listing the built-in names of both kinds; the spec's own
    /// errors for a file that does not parse.
    pub fn resolve(name_or_path: &str) -> Result<Self> {
        if let Some(spec) = MlpSpec::resolve(name_or_path)? {
            return Ok(Self::Tabular(spec));
        }
        match VariantSpec::resolve(name_or_path) {
            Ok(spec) => Ok(Self::Image(spec)),
            Err(Error::UnknownVariant { name, mut known }) => {
                known.extend(
                    MlpSpec::builtin()
                        .into_iter()
                        .map(|s| format!("{} (tabular)", s.name)),
                );
                Err(Error::UnknownVariant { name, known })
            }
            Err(e) => Err(e),
        }
    }

    /// [`Variant::resolve`] for a use that takes images: a tabular net is refused, saying
    /// what it is for.
    ///
    /// # Errors
    /// As [`Variant::resolve`]; [`Error::Spec`] for a tabular net.
    pub fn resolve_image(name_or_path: &str) -> Result<VariantSpec> {
        match Self::resolve(name_or_path)? {
            Self::Image(spec) => Ok(spec),
            Self::Tabular(spec) => Err(Error::Spec {
                origin: match MlpSpec::find_builtin(name_or_path) {
                    Some(_) => format!("{} (embedded)", spec.name),
                    None => name_or_path.to_string(),
                },
                message: "a net for tabular data, not images: it trains on the columns of a CSV \
                          file and predicts its rows; the image commands take image variants"
                    .into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_both_kinds_resolve_and_an_image_use_refuses_a_tabular_net() {
        assert!(matches!(Variant::resolve("121").unwrap(), Variant::Image(s) if s.name == "densenet121"));
        assert!(
            matches!(Variant::resolve("dense-mlp").unwrap(), Variant::Tabular(s) if s.name == "dense-mlp")
        );
        let err = Variant::resolve_image("dense-mlp").unwrap_err().to_string();
        assert!(err.contains("a net for tabular data, not images"), "{err}");
        let err = Variant::resolve("densenet122").unwrap_err().to_string();
        assert!(
            err.contains("densenet121") && err.contains("dense-mlp (tabular)"),
            "{err}"
        );
    }
}
