//! Document addresses: a document lives in a space and has an id inside it.

use std::fmt;

/// Why an id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("{what} id must be 1 to 255 bytes long, got {len}")]
    Length { what: &'static str, len: usize },
    #[error("{what} id contains {found:?}; allowed are A-Z a-z 0-9 and . _ ~ : @ $ -")]
    Character { what: &'static str, found: char },
    #[error("document address must look like {{space}}/{{doc}}")]
    Shape,
}

/// A valid `{space}/{doc}` pair. Constructed only through [`DocAddress::parse`]
/// (or [`DocAddress::parse_path`]), so inner code never re-checks ids.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocAddress {
    space: String,
    doc: String,
}

fn check_id(what: &'static str, id: &str) -> Result<(), AddressError> {
    if id.is_empty() || id.len() > 255 {
        return Err(AddressError::Length {
            what,
            len: id.len(),
        });
    }
    match id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._~:@$-".contains(*c)))
    {
        Some(found) => Err(AddressError::Character { what, found }),
        None => Ok(()),
    }
}

/// Checks a space id on its own (for space-level operations such as listing).
pub fn check_space_id(space: &str) -> Result<(), AddressError> {
    check_id("space", space)
}

impl DocAddress {
    /// Validates a space id and a doc id.
    pub fn parse(space: &str, doc: &str) -> Result<Self, AddressError> {
        check_id("space", space)?;
        check_id("doc", doc)?;
        Ok(Self {
            space: space.to_owned(),
            doc: doc.to_owned(),
        })
    }

    /// The address of a space's event feed (documents created, updated,
    /// renamed, deleted). Not a document: its doc id is empty, which no
    /// client can name, so it never collides with one.
    pub fn space_feed(space: &str) -> Result<Self, AddressError> {
        check_id("space", space)?;
        Ok(Self {
            space: space.to_owned(),
            doc: String::new(),
        })
    }

    /// Parses the `{space}/{doc}` form used as a y-websocket room name.
    pub fn parse_path(path: &str) -> Result<Self, AddressError> {
        let (space, doc) = path.split_once('/').ok_or(AddressError::Shape)?;
        Self::parse(space, doc)
    }

    pub fn space(&self) -> &str {
        &self.space
    }

    pub fn doc(&self) -> &str {
        &self.doc
    }
}

impl fmt::Display for DocAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.space, self.doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        let a = DocAddress::parse("team-1", "a.b_c~d:e@f$g-h").unwrap();
        assert_eq!(a.to_string(), "team-1/a.b_c~d:e@f$g-h");
        assert_eq!(
            DocAddress::parse_path("s/d").unwrap(),
            DocAddress::parse("s", "d").unwrap()
        );
    }

    #[test]
    fn rejects_bad_ids() {
        assert!(matches!(
            DocAddress::parse("", "d"),
            Err(AddressError::Length { .. })
        ));
        assert!(matches!(
            DocAddress::parse("s", &"x".repeat(256)),
            Err(AddressError::Length { len: 256, .. })
        ));
        assert_eq!(
            DocAddress::parse("s", "a b"),
            Err(AddressError::Character {
                what: "doc",
                found: ' '
            })
        );
        assert!(DocAddress::parse("s", "é").is_err());
        assert_eq!(DocAddress::parse_path("nodoc"), Err(AddressError::Shape));
        assert!(DocAddress::parse_path("a/b/c").is_err());
    }
}
