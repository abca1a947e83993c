//! The single error type of the reporting/CLI half: every fallible operation
//! returns [`Error`], which names the operation that failed and its cause.

use std::fmt;

/// What went wrong, and during which operation (`op`, e.g. "read hlog file x.hlog").
#[non_exhaustive]
#[derive(Debug)]
pub enum Error {
    /// Reading or writing a file or stream failed.
    Io {
        /// The operation that was attempted.
        op: String,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// Text input (argument value, .hgrm, .hlog, mix file) could not be parsed.
    Parse {
        /// The operation that was attempted.
        op: String,
        /// 1-based line number, when the input is line oriented.
        line: Option<usize>,
        /// Why the input was rejected.
        reason: String,
    },
    /// Arguments parsed but are inconsistent or out of range.
    Invalid {
        /// The operation that was attempted.
        op: String,
        /// Why the value was rejected.
        reason: String,
    },
    /// A histogram operation (encode, decode, add) failed.
    Histogram {
        /// The operation that was attempted.
        op: String,
        /// The underlying cause, as text.
        reason: String,
    },
    /// Drawing the SVG plot failed.
    Plot {
        /// The operation that was attempted.
        op: String,
        /// The underlying cause, as text.
        reason: String,
    },
    /// The load run itself failed (workers could not start, a worker died).
    Run {
        /// The operation that was attempted.
        op: String,
        /// The runtime's error, as text.
        reason: String,
    },
    /// JSON serialization failed.
    Json {
        /// The operation that was attempted.
        op: String,
        /// The underlying serde_json error.
        source: serde_json::Error,
    },
}

impl Error {
    /// An I/O error during `op`.
    pub fn io(op: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            op: op.into(),
            source,
        }
    }

    /// A parse error during `op`, optionally at a 1-based `line`.
    pub fn parse(op: impl Into<String>, line: Option<usize>, reason: impl Into<String>) -> Self {
        Error::Parse {
            op: op.into(),
            line,
            reason: reason.into(),
        }
    }

    /// An invalid (but well-formed) value during `op`.
    pub fn invalid(op: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            op: op.into(),
            reason: reason.into(),
        }
    }

    /// A histogram encode/decode/add failure during `op`.
    pub fn histogram(op: impl Into<String>, reason: impl fmt::Display) -> Self {
        Error::Histogram {
            op: op.into(),
            reason: reason.to_string(),
        }
    }

    /// A plotting failure during `op`.
    pub fn plot(op: impl Into<String>, reason: impl fmt::Display) -> Self {
        Error::Plot {
            op: op.into(),
            reason: reason.to_string(),
        }
    }

    /// A failure of the load run during `op` (from the runtime).
    pub fn run(op: impl Into<String>, reason: impl fmt::Display) -> Self {
        Error::Run {
            op: op.into(),
            reason: reason.to_string(),
        }
    }

    /// The operation that failed.
    pub fn op(&self) -> &str {
        match self {
            Error::Io { op, .. }
            | Error::Parse { op, .. }
            | Error::Invalid { op, .. }
            | Error::Histogram { op, .. }
            | Error::Plot { op, .. }
            | Error::Run { op, .. }
            | Error::Json { op, .. } => op,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { op, source } => write!(f, "{op}: {source}"),
            Error::Parse {
                op,
                line: Some(line),
                reason,
            } => write!(f, "{op}: line {line}: {reason}"),
            Error::Parse {
                op,
                line: None,
                reason,
            } => write!(f, "{op}: {reason}"),
            Error::Invalid { op, reason }
            | Error::Histogram { op, reason }
            | Error::Plot { op, reason }
            | Error::Run { op, reason } => write!(f, "{op}: {reason}"),
            Error::Json { op, source } => write!(f, "{op}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::Json { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_operation_and_cause() {
        let e = Error::parse("parse mix file m.txt", Some(3), "weight must be > 0");
        assert_eq!(
            e.to_string(),
            "parse mix file m.txt: line 3: weight must be > 0"
        );
        assert_eq!(e.op(), "parse mix file m.txt");
        let e = Error::io(
            "read x.hgrm",
            std::io::Error::new(std::io::ErrorKind::NotFound, "No such file"),
        );
        assert_eq!(e.to_string(), "read x.hgrm: No such file");
        assert!(std::error::Error::source(&e).is_some());
        let e = Error::invalid("validate arguments", "rate must be > 0");
        assert_eq!(e.to_string(), "validate arguments: rate must be > 0");
    }
}
