use std::fmt;

/// Non-fatal problems found while answering: a store that was skipped, a result that was
/// truncated. Deduplicated, in the order first seen. They travel beside results up to the
/// `warnings` field of the JSON response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Warnings(Vec<String>);

impl Warnings {
    /// No warnings.
    pub fn new() -> Self {
        Warnings(Vec::new())
    }

    /// Adds a warning unless the same text is already there.
    pub fn push(&mut self, w: impl Into<String>) {
        let w = w.into();
        if !self.0.contains(&w) {
            self.0.push(w);
        }
    }

    /// Adds another set's warnings, skipping duplicates.
    pub fn extend(&mut self, other: Warnings) {
        for w in other.0 {
            self.push(w);
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The warnings, in the order first added.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// The warnings as strings, for the JSON answer.
    pub fn into_vec(self) -> Vec<String> {
        self.0
    }
}

impl fmt::Display for Warnings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

impl<S: Into<String>> FromIterator<S> for Warnings {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        let mut w = Warnings::new();
        for s in iter {
            w.push(s);
        }
        w
    }
}
