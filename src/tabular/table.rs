//! A CSV file of tabular data read whole: a header of column names, then rows of strings, each
//! row remembering its line in the file so that every later error can point at it.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The strings pandas' `read_csv` reads as missing by default (its `na_values`), so that a file
/// means the same here as in the book's code.
const MISSING: &[&str] = &[
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
    "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
];

/// True for a value pandas' `read_csv` reads as missing by default (`""`, `NA`, `N/A`, `NaN`,
/// `null`, `None`, ...: its `na_values`), after trimming.
pub fn is_missing(value: &str) -> bool {
    MISSING.contains(&value)
}

/// The value as a finite number, if it is one (`12`, `-3.5e2`); `inf` and `nan` are not.
pub fn parse_number(value: &str) -> Option<f64> {
    value.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// A CSV file: a header row of unique column names and rows of as many fields, values trimmed.
#[derive(Debug, Clone)]
pub struct CsvTable {
    /// The file it was read from, for errors.
    pub path: PathBuf,
    /// Column names, in file order.
    pub columns: Vec<String>,
    rows: Vec<Vec<String>>,
    lines: Vec<u64>,
}

impl CsvTable {
    /// Reads a comma-separated file with a header row (RFC 4180 quoting).
    ///
    /// # Errors
    /// [`Error::Csv`] naming the file and, where there is one, the line: an unreadable file,
    /// a ragged row (the number of fields found and expected), text that is not UTF-8, an empty
    /// or repeated column name, or a file with no rows.
    pub fn read(path: &Path) -> Result<Self> {
        if path.is_dir() {
            return Err(Error::Csv {
                path: path.to_path_buf(),
                line: None,
                column: None,
                message: "is a folder: name a CSV file".into(),
            });
        }
        let file = std::fs::File::open(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gz")) {
            Self::from_reader(flate2::read::MultiGzDecoder::new(file), path)
        } else {
            Self::from_reader(file, path)
        }
    }

    /// [`CsvTable::read`] from any reader; `path` names it in errors. The separator is the
    /// one of `,`, `;` and tab that the header line has most of (comma on a tie), so that
    /// files written with a European locale's `;` or as TSV read too.
    pub fn from_reader(mut reader: impl std::io::Read, path: &Path) -> Result<Self> {
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut csv = csv::ReaderBuilder::new()
            .has_headers(true)
            .delimiter(separator(&bytes))
            .trim(csv::Trim::All)
            .from_reader(bytes.as_slice());
        let header = csv.headers().map_err(|e| csv_error(path, &bytes, &e))?.clone();
        let columns: Vec<String> = header.iter().map(str::to_string).collect();
        if columns.iter().all(String::is_empty) {
            return Err(Error::Csv {
                path: path.to_path_buf(),
                line: Some(1),
                column: None,
                message: "no header row: the first line must name the columns".into(),
            });
        }
        for (i, name) in columns.iter().enumerate() {
            if name.is_empty() {
                return Err(Error::Csv {
                    path: path.to_path_buf(),
                    line: Some(1),
                    column: None,
                    message: format!("column {} of the header has no name", i + 1),
                });
            }
            if columns[..i].contains(name) {
                return Err(Error::Csv {
                    path: path.to_path_buf(),
                    line: Some(1),
                    column: Some(name.clone()),
                    message: "the header names this column twice".into(),
                });
            }
        }
        let mut rows = Vec::new();
        let mut lines = Vec::new();
        let mut counter = LineCounter::default();
        for record in csv.records() {
            let record = record.map_err(|e| csv_error(path, &bytes, &e))?;
            // A blank line between rows is skipped by the reader; a row of empty fields is kept
            // (all missing).
            lines.push(record.position().map_or(0, |p| counter.line(&bytes, p)));
            rows.push(record.iter().map(str::to_string).collect());
        }
        if rows.is_empty() {
            return Err(Error::Csv {
                path: path.to_path_buf(),
                line: None,
                column: None,
                message: "no rows after the header".into(),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            columns,
            rows,
            lines,
        })
    }

    /// Number of rows (not counting the header).
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when there are no rows (never for a table [`CsvTable::read`] returned).
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The index of the column called `name`, exactly.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    /// The index of column `name`, or an error that lists the columns there are (and the one
    /// differing only in case, if any); `role` says what it was wanted for (`"target"`).
    pub fn require_column(&self, name: &str, role: &str) -> Result<usize> {
        self.column_index(name).ok_or_else(|| {
            let near = self
                .columns
                .iter()
                .find(|c| c.eq_ignore_ascii_case(name))
                .map(|c| format!(" (there is `{c}`: names are case-sensitive)"))
                .unwrap_or_default();
            let shown: Vec<&str> = self.columns.iter().take(12).map(String::as_str).collect();
            let more = self.columns.len().saturating_sub(shown.len());
            Error::Csv {
                path: self.path.clone(),
                line: Some(1),
                column: Some(name.to_string()),
                message: format!(
                    "no {role} column of that name{near}; the header has {} columns: {}{}",
                    self.columns.len(),
                    shown.join(", "),
                    if more > 0 {
                        format!(", … ({more} more)")
                    } else {
                        String::new()
                    }
                ),
            }
        })
    }

    /// The value in row `row`, column `column` (indices), trimmed.
    pub fn value(&self, row: usize, column: usize) -> &str {
        &self.rows[row][column]
    }

    /// The line of the file where row `row` starts (the header is line 1).
    pub fn line(&self, row: usize) -> u64 {
        self.lines[row]
    }

    /// The table restricted to `rows` (indices into this one, in that order).
    pub fn select(&self, rows: &[usize]) -> Self {
        Self {
            path: self.path.clone(),
            columns: self.columns.clone(),
            rows: rows.iter().map(|&r| self.rows[r].clone()).collect(),
            lines: rows.iter().map(|&r| self.lines[r]).collect(),
        }
    }

    /// An error about the value in row `row` of column `column`, naming file, line and column.
    pub fn error_at(&self, row: usize, column: usize, message: String) -> Error {
        Error::Csv {
            path: self.path.clone(),
            line: Some(self.line(row)),
            column: Some(self.columns[column].clone()),
            message,
        }
    }
}

/// The separator of a CSV file: whichever of `,`, `;` and tab its first line has most of
/// outside quotes; a comma on a tie.
fn separator(bytes: &[u8]) -> u8 {
    let (mut counts, mut quoted) = ([0usize; 3], false);
    for &b in bytes.iter().take_while(|&&b| b != b'\n') {
        match b {
            b'"' => quoted = !quoted,
            b',' if !quoted => counts[0] += 1,
            b';' if !quoted => counts[1] += 1,
            b'\t' if !quoted => counts[2] += 1,
            _ => {}
        }
    }
    let best = (0..3).fold(0, |best, i| if counts[i] > counts[best] { i } else { best });
    [b',', b';', b'\t'][best]
}

/// The line of the file where a record starts, counted from its byte offset (the csv crate's
/// own count leaves out blank lines), from the file's start.
fn line_at(bytes: &[u8], position: &csv::Position) -> u64 {
    LineCounter::default().line(bytes, position)
}

/// [`line_at`] for records met in order: each byte is counted once.
#[derive(Default)]
struct LineCounter {
    offset: usize,
    newlines: u64,
}

impl LineCounter {
    fn line(&mut self, bytes: &[u8], position: &csv::Position) -> u64 {
        let mut start = (position.byte() as usize).min(bytes.len());
        // The offset may be that of blank lines the reader skipped before the record.
        while start < bytes.len() && matches!(bytes[start], b'\n' | b'\r') {
            start += 1;
        }
        if start < self.offset {
            *self = Self::default();
        }
        self.newlines += bytes[self.offset..start].iter().filter(|&&b| b == b'\n').count() as u64;
        self.offset = start;
        1 + self.newlines
    }
}

fn csv_error(path: &Path, bytes: &[u8], e: &csv::Error) -> Error {
    let (line, message) = match e.kind() {
        csv::ErrorKind::UnequalLengths {
            pos,
            expected_len,
            len,
        } => (
            pos.as_ref().map(|p| line_at(bytes, p)),
            format!("a ragged row: {len} fields where the header has {expected_len}"),
        ),
        csv::ErrorKind::Utf8 { pos, err } => (
            pos.as_ref().map(|p| line_at(bytes, p)),
            format!(
                "field {} is not UTF-8 text (a Latin-1 or Windows-1252 file? save it as UTF-8){}",
                err.field() + 1,
                if bytes.starts_with(&[0x1f, 0x8b]) {
                    "; its bytes are gzip's: name it .gz"
                } else {
                    ""
                }
            ),
        ),
        csv::ErrorKind::Io(err) => (None, err.to_string()),
        _ => (e.position().map(|p| line_at(bytes, p)), e.to_string()),
    };
    Error::Csv {
        path: path.to_path_buf(),
        line,
        column: None,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Result<CsvTable> {
        CsvTable::from_reader(text.as_bytes(), Path::new("houses.csv"))
    }

    #[test]
    fn reads_quoted_fields_and_remembers_lines() {
        let t = table("a,b\n1,\"x, y\"\n\n2,  z \n").unwrap();
        assert_eq!(t.columns, ["a", "b"]);
        assert_eq!(t.len(), 2);
        assert_eq!(t.value(0, 1), "x, y");
        assert_eq!(t.value(1, 1), "z");
        assert_eq!((t.line(0), t.line(1)), (2, 4));
    }

    #[test]
    fn semicolons_tabs_byte_order_marks_and_crlf_read_as_commas() {
        for text in ["a;b\r\n1,5;x\r\n", "\u{feff}a,b\n\"1,5\",x\n", "a\tb\n1,5\tx\n"] {
            let t = table(text).unwrap();
            assert_eq!(t.columns, ["a", "b"], "{text:?}");
            assert_eq!((t.value(0, 0), t.value(0, 1)), ("1,5", "x"), "{text:?}");
        }
    }

    #[test]
    fn a_ragged_row_names_its_line_and_counts() {
        let e = table("a,b,c\n1,2,3\n4,5\n").unwrap_err().to_string();
        assert!(e.contains("houses.csv") && e.contains("line 3"), "{e}");
        assert!(e.contains("2 fields where the header has 3"), "{e}");
    }

    #[test]
    fn a_missing_column_lists_the_header_and_near_names() {
        let t = table("Sale_Price_x,sale_price\n1,2\n").unwrap();
        let e = t.require_column("Sale_Price", "target").unwrap_err().to_string();
        assert!(
            e.contains("no target column") && e.contains("`sale_price`"),
            "{e}"
        );
        assert!(e.contains("Sale_Price_x, sale_price"), "{e}");
    }

    #[test]
    fn refuses_repeated_or_empty_names_and_no_rows() {
        assert!(table("a,a\n1,2\n").unwrap_err().to_string().contains("twice"));
        assert!(table("a,,c\n1,2,3\n")
            .unwrap_err()
            .to_string()
            .contains("column 2"));
        assert!(table("a,b\n").unwrap_err().to_string().contains("no rows"));
        assert!(table("").unwrap_err().to_string().contains("no header"));
    }

    #[test]
    fn missing_values_and_numbers_follow_pandas() {
        for v in ["", "NA", "NaN", "null", "N/A"] {
            assert!(is_missing(v), "{v}");
        }
        assert!(!is_missing("No_Alley_Access"));
        assert_eq!(parse_number("-3.5e2"), Some(-350.0));
        assert_eq!(parse_number("inf"), None);
        assert_eq!(parse_number("1,000"), None);
    }
}
