//! Class-name lists that ship with the crate.
//!
//! - `imagenet-1k`: the 1000 ImageNet classes in torchvision's index order and spelling
//!   (BSD-3-Clause, from torchvision);
//! - `fashion-mnist`: the 10 Fashion-MNIST classes (MIT, Zalando SE);
//! - `cifar-10`: the 10 CIFAR-10 classes.

const LISTS: &[(&str, &str)] = &[
    ("imagenet-1k", include_str!("labels/imagenet-1k.txt")),
    ("fashion-mnist", include_str!("labels/fashion-mnist.txt")),
    ("cifar-10", include_str!("labels/cifar-10.txt")),
];

/// The names of the built-in lists.
pub fn names() -> Vec<&'static str> {
    LISTS.iter().map(|(n, _)| *n).collect()
}

/// The class names of a built-in list, in index order; `None` for an unknown list.
pub fn builtin(name: &str) -> Option<Vec<String>> {
    LISTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| text.lines().map(str::to_string).collect())
}

/// Class names for a model with `num_classes` outputs: the named list when it has that many
/// entries, else `class0`, `class1`, ...
pub fn for_classes(list: Option<&str>, num_classes: usize) -> Vec<String> {
    match list.and_then(builtin) {
        Some(names) if names.len() == num_classes => names,
        _ => (0..num_classes).map(|i| format!("class{i}")).collect(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lists_have_their_sizes_and_order() {
        let imagenet = super::builtin("imagenet-1k").unwrap();
        assert_eq!(imagenet.len(), 1000);
        assert_eq!(imagenet[0], "tench");
        assert_eq!(imagenet[281], "tabby");
        assert_eq!(super::builtin("fashion-mnist").unwrap()[9], "Ankle boot");
        assert_eq!(super::builtin("cifar-10").unwrap().len(), 10);
        assert_eq!(
            super::for_classes(Some("cifar-10"), 3),
            ["class0", "class1", "class2"]
        );
    }
}
