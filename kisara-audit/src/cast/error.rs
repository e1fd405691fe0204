//! What goes wrong reading or writing asciicast files.

use std::path::PathBuf;

/// An error of the asciicast reader or of [`super::CastStore`].
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum CastError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The first line is not an asciicast v2 header (nor the file a v1
    /// recording).
    #[error("not an asciicast v1 or v2 recording: {message}")]
    BadHeader {
        /// What is wrong, naming the bad value.
        message: String,
    },
    /// A line in the middle of a recording is not a valid event.
    #[error("line {line}: {message}")]
    BadLine {
        /// The line's number, from 1 (the header).
        line: u64,
        /// What is wrong, naming the bad value.
        message: String,
    },
    /// A line is longer than the reader accepts.
    #[error(
        "line {line} is longer than the limit of {max} bytes (CastReaderOptions::max_line_bytes)"
    )]
    LineTooLong {
        /// The line's number, from 1.
        line: u64,
        /// The limit.
        max: usize,
    },
    /// A recording's metadata file is unreadable.
    #[error("{}: bad recording metadata: {message}", path.display())]
    BadMetadata {
        /// The metadata file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The store's options are out of range.
    #[error("invalid cast store option {field}: {message}")]
    Options {
        /// The option.
        field: &'static str,
        /// What is wrong, naming the bad value.
        message: String,
    },
}

impl CastError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

impl From<CastError> for kisara_core::Error {
    fn from(error: CastError) -> Self {
        match error {
            CastError::Io { .. } => Self::Backend {
                backend: "cast store",
                message: error.to_string(),
                source: Some(Box::new(error)),
            },
            CastError::BadHeader { .. }
            | CastError::BadLine { .. }
            | CastError::LineTooLong { .. }
            | CastError::BadMetadata { .. } => Self::invalid("asciicast", error.to_string()),
            CastError::Options { .. } => Self::invalid("cast store options", error.to_string()),
        }
    }
}
