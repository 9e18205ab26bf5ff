//! The progress bar of `infer` and `features` over many images: on standard error when it is
//! a terminal, and nothing otherwise (a pipe, a file, CI's log).

use indicatif::{ProgressBar, ProgressState, ProgressStyle};

/// A bar over `len` images, its line starting with `what` ("classifying"); indicatif draws
/// nothing when standard error is not a terminal.
pub fn images_bar(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what} [{{bar:30}}] {{pos}}/{{len}} images, {{rate}}, eta {{eta}}"
        ))
        .expect("valid template")
        .with_key("rate", |state: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.1}/s", state.per_sec());
        })
        .progress_chars("=> "),
    );
    bar
}
