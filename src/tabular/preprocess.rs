//! The book's preprocessing of tabular data (Dive into Deep Learning 5.7, "Predicting House
//! Prices on Kaggle"), fitted on a training split and applied to any other:
//!
//! - numeric columns standardised, `(x − mean) / std` with the training split's mean and
//!   standard deviation (n − 1, as pandas), then missing values set to 0 (the mean);
//! - categorical columns one-hot encoded over the training split's categories (sorted, as
//!   `pd.get_dummies`), with "missing" as a category of its own (`dummy_na=True`), last;
//! - the target's natural logarithm, which the nets fit standardised (its training mean and
//!   standard deviation are kept to map predictions back).
//!
//! Which columns are numeric is decided once per file by [`Schema::infer`], so that every fold
//! of a cross-validation encodes the same columns the same way.

use serde::{Deserialize, Serialize};

use super::table::{is_missing, parse_number, CsvTable};
use crate::error::{Error, Result};

/// What the columns of a file are: the target, an identifier (not a feature), and the features
/// with their kinds, in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct Schema {
    /// The column to predict.
    pub target: String,
    /// A column that names rows (Kaggle's `Id`): copied to predictions, never a feature.
    pub id_column: Option<String>,
    /// Every other column, with whether it is numeric.
    pub features: Vec<(String, ColumnKind)>,
}

/// How a feature column is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnKind {
    /// Numbers (or missing values): standardised.
    Numeric,
    /// Labels: one-hot encoded.
    Categorical,
}

/// What the user says about the columns; everything else is inferred.
#[derive(Debug, Clone, Default)]
pub struct ColumnOptions {
    /// The column to predict (`--target`).
    pub target: String,
    /// The identifier column; when `None`, a column called `id` (any case) is
    /// taken as one, with a note.
    pub id_column: Option<String>,
    /// Columns to one-hot encode even though they hold numbers.
    pub categorical: Vec<String>,
}

impl Schema {
    /// Decides each column's role and kind from the whole file. A column is numeric when its
    /// values (missing ones aside) are numbers, categorical when most of them are not or when
    /// the options say so. Notes what was decided that a user might not expect.
    ///
    /// # Errors
    /// [`Error::Csv`]: a target, identifier or categorical column the header lacks; a
    /// column of mostly numbers with a value that is not one (its line and value, and how to
    /// say the column is categorical).
    pub fn infer(table: &CsvTable, options: &ColumnOptions) -> Result<(Self, Vec<String>)> {
        let mut notes = Vec::new();
        table.require_column(&options.target, "target")?;
        let id_column = match &options.id_column {
            Some(id) => {
                table.require_column(id, "`id_column`")?;
                if *id == options.target {
                    return Err(Error::Csv {
                        path: table.path.clone(),
                        line: Some(1),
                        column: Some(id.clone()),
                        message: "`id_column` names the target column: name the rows' identifier".into(),
                    });
                }
                Some(id.clone())
            }
            None => {
                let found: Vec<&String> = table
                    .columns
                    .iter()
                    .filter(|c| c.eq_ignore_ascii_case("id") && **c != options.target)
                    .collect();
                if found.len() > 1 {
                    return Err(Error::Csv {
                        path: table.path.clone(),
                        line: Some(1),
                        column: None,
                        message: format!(
                            "columns {} could each be the rows' identifier: name one with `id_column`",
                            found
                                .iter()
                                .map(|c| format!("`{c}`"))
                                .collect::<Vec<_>>()
                                .join(" and ")
                        ),
                    });
                }
                let found = found.first().map(|c| c.to_string());
                if let Some(id) = &found {
                    notes.push(format!(
                        "column `{id}` is taken as the rows' identifier, not a feature \
                         (`id_column` names another)"
                    ));
                }
                found
            }
        };
        if let Some(id) = &id_column {
            let index = table.column_index(id).expect("checked above");
            let mut values: Vec<&str> = (0..table.len()).map(|r| table.value(r, index)).collect();
            values.sort_unstable();
            if let Some(w) = values.windows(2).find(|w| w[0] == w[1]) {
                notes.push(format!(
                    "the identifier column `{id}` repeats values (`{}`, ...): predictions will \
                     share those keys",
                    w[0]
                ));
            }
        }
        for c in &options.categorical {
            table.require_column(c, "`categorical`")?;
            if *c == options.target || Some(c) == id_column.as_ref() {
                return Err(Error::Csv {
                    path: table.path.clone(),
                    line: Some(1),
                    column: Some(c.clone()),
                    message: "`categorical` names the target or identifier column, not a feature".into(),
                });
            }
        }
        let mut features = Vec::new();
        for (index, name) in table.columns.iter().enumerate() {
            if *name == options.target || Some(name) == id_column.as_ref() {
                continue;
            }
            let kind = if options.categorical.contains(name) {
                ColumnKind::Categorical
            } else {
                infer_kind(table, index)?
            };
            features.push((name.clone(), kind));
        }
        if features.is_empty() {
            return Err(Error::Csv {
                path: table.path.clone(),
                line: Some(1),
                column: None,
                message: "no feature columns: the header has only the target (and an identifier)".into(),
            });
        }
        Ok((
            Self {
                target: options.target.clone(),
                id_column,
                features,
            },
            notes,
        ))
    }

    /// Fits the preprocessing on `train` (a split of the file the schema was inferred from):
    /// each numeric column's mean and standard deviation, each categorical column's categories,
    /// and the log target's mean and standard deviation.
    ///
    /// # Errors
    /// [`Error::Csv`]: a target value that is missing, not a number or not positive (its
    /// logarithm is taken), with its line.
    pub fn fit(&self, train: &CsvTable) -> Result<Preprocessor> {
        let mut features = Vec::with_capacity(self.features.len());
        for (name, kind) in &self.features {
            let index = train.require_column(name, "feature")?;
            features.push(match kind {
                ColumnKind::Numeric => {
                    let values: Vec<f64> = (0..train.len())
                        .filter_map(|r| parse_number(train.value(r, index)))
                        .collect();
                    let (mean, std) = mean_std(&values);
                    if !(mean.is_finite() && std.is_finite()) {
                        return Err(Error::Csv {
                            path: train.path.clone(),
                            line: None,
                            column: Some(name.clone()),
                            message: "values too large to standardise (their mean or variance \
                                      overflows a float64): rescale the column"
                                .into(),
                        });
                    }
                    FeatureColumn::Numeric {
                        name: name.clone(),
                        mean,
                        std,
                    }
                }
                ColumnKind::Categorical => {
                    let mut categories: Vec<String> = (0..train.len())
                        .map(|r| train.value(r, index))
                        .filter(|v| !is_missing(v))
                        .map(str::to_string)
                        .collect();
                    categories.sort();
                    categories.dedup();
                    FeatureColumn::Categorical {
                        name: name.clone(),
                        categories,
                    }
                }
            });
        }
        let width: usize = features.iter().map(FeatureColumn::width).sum();
        if width > MAX_INPUTS {
            let widest = features
                .iter()
                .max_by_key(|f| f.width())
                .expect("a schema has features");
            return Err(Error::Csv {
                path: train.path.clone(),
                line: None,
                column: Some(widest.name().to_string()),
                message: format!(
                    "the encoded rows would have {width} inputs, more than the limit of \
                     {MAX_INPUTS}; this column alone has {} categories (an identifier or free \
                     text? name it with `id_column`, or leave it out of the file)",
                    widest.width() - 1
                ),
            });
        }
        let mut preprocessor = Preprocessor {
            target: self.target.clone(),
            id_column: self.id_column.clone(),
            features,
            target_mean: 0.0,
            target_std: 1.0,
        };
        let logs = preprocessor.log_targets(train)?;
        let (mean, std) = mean_std(&logs);
        preprocessor.target_mean = mean;
        preprocessor.target_std = if std > 0.0 { std } else { 1.0 };
        Ok(preprocessor)
    }
}

/// The most inputs the encoded rows may have (the widths' limit of the specs).
const MAX_INPUTS: usize = 1 << 16;

/// A numeric column unless most values are not numbers; a stray non-number among numbers is
/// an error rather than a silent switch to categories.
fn infer_kind(table: &CsvTable, column: usize) -> Result<ColumnKind> {
    let (mut numbers, mut labels, mut first_label) = (0usize, 0usize, None);
    for row in 0..table.len() {
        let v = table.value(row, column);
        if is_missing(v) {
            continue;
        }
        if parse_number(v).is_some() {
            numbers += 1;
        } else {
            labels += 1;
            first_label.get_or_insert(row);
        }
    }
    match first_label {
        None if numbers > 0 => Ok(ColumnKind::Numeric),
        Some(row) if numbers > labels => Err(table.error_at(
            row,
            column,
            format!(
                "`{}` is {}, in a column of numbers ({numbers} of {} values are); \
                 correct it, leave it empty for a missing value, or pass --categorical {} to \
                 one-hot encode the column",
                shown(table.value(row, column)),
                not_a_number(table.value(row, column)),
                numbers + labels,
                table.columns[column]
            ),
        )),
        _ => Ok(ColumnKind::Categorical),
    }
}

/// `v` for a message: at most 40 characters, then an ellipsis.
fn shown(v: &str) -> String {
    match v.char_indices().nth(40) {
        Some((at, _)) => format!("{}…", &v[..at]),
        None => v.to_string(),
    }
}

/// Why `v` is no value of a numeric column.
fn not_a_number(v: &str) -> &'static str {
    match v.parse::<f64>() {
        Ok(x) if !x.is_finite() => "not a finite number",
        _ => "not a number",
    }
}

/// Mean and sample standard deviation (n − 1, as pandas); the deviation is 0 for fewer than
/// two values, and the mean 0 for none.
fn mean_std(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// One feature column of a fitted [`Preprocessor`], with what encoding it needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum FeatureColumn {
    /// Standardised: `(x − mean) / std`, missing → 0; a column of zero spread encodes as 0.
    Numeric {
        /// The column's name.
        name: String,
        /// Its training mean.
        mean: f64,
        /// Its training standard deviation (n − 1).
        std: f64,
    },
    /// One-hot over `categories` then one slot for a missing value; a category the training
    /// split did not have encodes as all zeros.
    Categorical {
        /// The column's name.
        name: String,
        /// The training split's categories, sorted.
        categories: Vec<String>,
    },
}

impl FeatureColumn {
    /// The column's name.
    pub fn name(&self) -> &str {
        match self {
            FeatureColumn::Numeric { name, .. } | FeatureColumn::Categorical { name, .. } => name,
        }
    }

    /// How many inputs of the net it becomes: 1, or the categories and "missing".
    pub fn width(&self) -> usize {
        match self {
            FeatureColumn::Numeric { .. } => 1,
            FeatureColumn::Categorical { categories, .. } => categories.len() + 1,
        }
    }
}

/// The book's preprocessing, fitted on a training split ([`Schema::fit`]); recorded in
/// checkpoints (as JSON) so that `infer` encodes new rows the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocessor {
    /// The predicted column; its values are prices (or any positive quantity).
    pub target: String,
    /// The identifier column, copied to predictions.
    pub id_column: Option<String>,
    /// The feature columns, in the order of the net's inputs.
    pub features: Vec<FeatureColumn>,
    /// Mean of the training split's log target.
    pub target_mean: f64,
    /// Standard deviation (n − 1) of the training split's log target; 1 if it was 0.
    pub target_std: f64,
}

/// Rows encoded for the net, and what the encoding had to decide.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The inputs, row-major (rows × [`Preprocessor::width`]).
    pub values: Vec<f32>,
    /// Number of rows.
    pub rows: usize,
    /// Per categorical column, the values the training split did not have (encoded as all
    /// zeros): `(column, count, first such value)`.
    pub unseen: Vec<(String, usize, String)>,
    /// Columns of the file that are none of the features, target or identifier: not used.
    pub ignored: Vec<String>,
}

impl Preprocessor {
    /// The net's input width: the sum of the columns' widths.
    pub fn width(&self) -> usize {
        self.features.iter().map(FeatureColumn::width).sum()
    }

    /// Encodes every row of `table`, whose header must have every feature column (in any
    /// order; others are ignored and listed).
    ///
    /// # Errors
    /// [`Error::Csv`]: feature columns the file lacks (all of them named); a value in a numeric
    /// column that is not a number (file, line, column, value).
    pub fn encode(&self, table: &CsvTable) -> Result<Encoded> {
        let missing: Vec<&str> = self
            .features
            .iter()
            .map(FeatureColumn::name)
            .filter(|n| table.column_index(n).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(Error::Csv {
                path: table.path.clone(),
                line: Some(1),
                column: None,
                message: format!(
                    "the model needs {} feature columns the header lacks: {}",
                    missing.len(),
                    missing.join(", ")
                ),
            });
        }
        let width = self.width();
        let mut values = vec![0f32; table.len() * width];
        let mut unseen = Vec::new();
        let mut offset = 0;
        for column in &self.features {
            let index = table.column_index(column.name()).expect("checked above");
            match column {
                FeatureColumn::Numeric { mean, std, .. } => {
                    for row in 0..table.len() {
                        let v = table.value(row, index);
                        if is_missing(v) {
                            continue;
                        }
                        let x = parse_number(v).ok_or_else(|| {
                            table.error_at(
                                row,
                                index,
                                format!(
                                    "`{}` is {}; the model reads this column as numbers \
                                     (leave it empty for a missing value)",
                                    shown(v),
                                    not_a_number(v)
                                ),
                            )
                        })?;
                        if *std > 0.0 {
                            let z = ((x - mean) / std) as f32;
                            if !z.is_finite() {
                                return Err(table.error_at(
                                    row,
                                    index,
                                    format!(
                                        "`{}` is too far outside the training values (mean {mean:.4e}, \
                                         sd {std:.4e}) to encode",
                                        shown(v)
                                    ),
                                ));
                            }
                            values[row * width + offset] = z;
                        }
                    }
                }
                FeatureColumn::Categorical { name, categories } => {
                    let (mut count, mut first) = (0, None);
                    for row in 0..table.len() {
                        let v = table.value(row, index);
                        let slot = if is_missing(v) {
                            Some(categories.len())
                        } else {
                            categories.binary_search_by(|c| c.as_str().cmp(v)).ok()
                        };
                        match slot {
                            Some(s) => values[row * width + offset + s] = 1.0,
                            None => {
                                count += 1;
                                first.get_or_insert_with(|| v.to_string());
                            }
                        }
                    }
                    if let Some(first) = first {
                        unseen.push((name.clone(), count, first));
                    }
                }
            }
            offset += column.width();
        }
        let ignored = table
            .columns
            .iter()
            .filter(|c| {
                **c != self.target
                    && Some(*c) != self.id_column.as_ref()
                    && !self.features.iter().any(|f| f.name() == c.as_str())
            })
            .cloned()
            .collect();
        Ok(Encoded {
            values,
            rows: table.len(),
            unseen,
            ignored,
        })
    }

    /// The natural logarithm of every row's target.
    ///
    /// # Errors
    /// [`Error::Csv`]: no target column; a value that is missing, not a number or not positive.
    pub fn log_targets(&self, table: &CsvTable) -> Result<Vec<f64>> {
        let index = table.require_column(&self.target, "target")?;
        (0..table.len())
            .map(|row| {
                let v = table.value(row, index);
                match parse_number(v) {
                    Some(x) if x > 0.0 => Ok(x.ln()),
                    Some(_) => Err(table.error_at(
                        row,
                        index,
                        format!(
                            "the target must be positive (its logarithm is fitted), found {}",
                            shown(v)
                        ),
                    )),
                    None if is_missing(v) => Err(table.error_at(row, index, "the target is missing".into())),
                    None => Err(table.error_at(
                        row,
                        index,
                        format!("the target `{}` is {}", shown(v), not_a_number(v)),
                    )),
                }
            })
            .collect()
    }

    /// A log target as the net fits it: `(log − mean) / std`.
    pub fn standardise_target(&self, log: f64) -> f64 {
        (log - self.target_mean) / self.target_std
    }

    /// The net's output back to a log target.
    pub fn log_prediction(&self, output: f64) -> f64 {
        output * self.target_std + self.target_mean
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn table(text: &str) -> CsvTable {
        CsvTable::from_reader(text.as_bytes(), Path::new("h.csv")).unwrap()
    }

    fn options(target: &str) -> ColumnOptions {
        ColumnOptions {
            target: target.into(),
            ..Default::default()
        }
    }

    #[test]
    fn standardises_numbers_and_one_hot_encodes_labels_as_pandas() {
        // Area: mean 2, std 1 (n − 1); the missing one becomes 0. Kind: categories a, b, then
        // missing.
        let t = table("Id,Area,Kind,Price\n1,1,b,10\n2,,a,20\n3,3,,40\n4,2,b,80\n");
        let (schema, notes) = Schema::infer(&t, &options("Price")).unwrap();
        assert_eq!(schema.id_column.as_deref(), Some("Id"));
        assert_eq!(notes.len(), 1);
        let p = schema.fit(&t).unwrap();
        assert_eq!(p.width(), 4);
        let e = p.encode(&t).unwrap();
        #[rustfmt::skip]
        let expected = [
            -1.0, 0.0, 1.0, 0.0,
            0.0, 1.0, 0.0, 0.0,
            1.0, 0.0, 0.0, 1.0,
            0.0, 0.0, 1.0, 0.0,
        ];
        assert_eq!(e.values, expected);
        let logs: Vec<f64> = [10f64, 20., 40., 80.].iter().map(|v| v.ln()).collect();
        assert_eq!(p.log_targets(&t).unwrap(), logs);
        let mean = logs.iter().sum::<f64>() / 4.0;
        assert!((p.target_mean - mean).abs() < 1e-12);
        assert!((p.log_prediction(p.standardise_target(logs[2])) - logs[2]).abs() < 1e-12);
    }

    #[test]
    fn an_unseen_category_is_all_zeros_and_counted() {
        let t = table("Kind,Price\na,1\nb,2\n");
        let (schema, _) = Schema::infer(&t, &options("Price")).unwrap();
        let p = schema.fit(&t).unwrap();
        let e = p.encode(&table("Kind,Price,Extra\nc,1,x\na,1,y\n")).unwrap();
        assert_eq!(e.values, [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
        assert_eq!(e.unseen, [("Kind".to_string(), 1, "c".to_string())]);
        assert_eq!(e.ignored, ["Extra"]);
    }

    #[test]
    fn a_word_among_numbers_names_line_column_and_value() {
        let t = table("Area,Price\n1,10\n2,20\nbig,30\n4,40\n");
        let e = Schema::infer(&t, &options("Price")).unwrap_err().to_string();
        assert!(
            e.starts_with("h.csv, line 4, column `Area`: `big` is not a number"),
            "{e}"
        );
        assert!(e.contains("--categorical Area"), "{e}");
        let o = ColumnOptions {
            categorical: vec!["Area".into()],
            ..options("Price")
        };
        assert_eq!(
            Schema::infer(&t, &o).unwrap().0.features[0].1,
            ColumnKind::Categorical
        );
    }

    #[test]
    fn bad_targets_name_their_line() {
        for (text, says) in [
            (
                "A,Price\n1,10\n2,\n",
                "line 3, column `Price`: the target is missing",
            ),
            (
                "A,Price\n1,10\n2,cheap\n",
                "line 3, column `Price`: the target `cheap`",
            ),
            (
                "A,Price\n1,0\n2,3\n",
                "line 2, column `Price`: the target must be positive",
            ),
        ] {
            let t = table(text);
            let (schema, _) = Schema::infer(&t, &options("Price")).unwrap();
            let e = schema.fit(&t).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn encoding_a_file_without_a_feature_column_names_it() {
        let t = table("A,B,Price\n1,x,10\n2,y,20\n");
        let p = Schema::infer(&t, &options("Price")).unwrap().0.fit(&t).unwrap();
        let e = p.encode(&table("A,Price\n1,2\n")).unwrap_err().to_string();
        assert!(e.contains("1 feature columns the header lacks: B"), "{e}");
        let e = p.encode(&table("A,B\nx,y\n")).unwrap_err().to_string();
        assert!(e.contains("line 2, column `A`: `x` is not a number"), "{e}");
    }
}
