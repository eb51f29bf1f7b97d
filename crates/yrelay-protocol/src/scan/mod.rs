//! A bounded, non-recursive walk over a Yjs v1 update that accepts only
//! what the JavaScript `yjs` package decodes, before yrs sees the bytes.
//!
//! yrs decodes more than yjs (type refs 7, 9 and 15; `Any` and JSON of any
//! depth) and decodes recursively; a count it reads sizes an allocation. So
//! every incoming update is walked here first, the way yjs reads it
//! (`readClientsStructRefs`, `readItemContent`, lib0's `readAny`), with:
//! - content kinds 1–9 and type refs 0–6 only (what yjs can construct), but
//!   for `Y.XmlHook` (5), which yrs cannot read;
//! - ids of a struct's own client that it refers to below its own clock;
//! - `Any` values and JSON strings nested at most [`MAX_VALUE_DEPTH`] deep;
//! - every count no larger than the bytes left to hold its elements;
//! - no struct of length 0 (yjs never writes one).

/// How deep `Any` values and JSON strings may nest. App data is shallow
/// (AFFiNE block props, editor attributes: well under 20 levels); 128 is
/// also serde_json's own recursion limit, and far below what yrs's
/// recursive decoders and encoders handle on a 2 MiB stack.
pub const MAX_VALUE_DEPTH: usize = 128;

/// The largest integer a JavaScript number holds exactly (lib0 refuses more).
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Why an update is refused before it is decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("update ends early")]
    Truncated,
    #[error("integer out of range")]
    IntegerOutOfRange,
    #[error("a count larger than the update")]
    CountTooLarge,
    #[error("string is not UTF-8")]
    BadString,
    #[error("content kind {0} is not one yjs knows")]
    UnknownContent(u8),
    #[error("type ref {0} is not one yjs knows")]
    UnknownTypeRef(u64),
    #[error("value tag {0} is not one yjs knows")]
    UnknownValue(u8),
    #[error("a struct of length 0")]
    EmptyStruct,
    #[error("value nested deeper than {MAX_VALUE_DEPTH} levels")]
    TooDeep,
    #[error("JSON content is not valid JSON")]
    BadJson,
    #[error("subdocument options are not an object")]
    BadDocOptions,
    #[error("{0} is not supported")]
    Unsupported(&'static str),
    #[error("a struct refers to a later clock of its own client")]
    ForwardReference,
}

/// What the walk learnt about the update.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    /// Structs (items, GC and skip ranges) it carries.
    pub structs: usize,
    /// Items holding a shared type (`ContentType`).
    pub types: usize,
    /// Ranges in its delete set.
    pub deletes: usize,
}

/// An item's id: its client and clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Id {
    pub client: u64,
    pub clock: u64,
}

/// Where a struct goes, as its encoding says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// A garbage-collected range (nothing to place).
    Gc,
    /// A range the update says nothing about.
    Skip,
    /// Directly in a root type.
    Root,
    /// In the type that item `Id` holds.
    In(Id),
    /// Next to its neighbours, in their parent (yjs takes the left one's).
    Beside {
        origin: Option<Id>,
        right: Option<Id>,
    },
}

/// One struct of an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Struct {
    pub id: Id,
    /// Its length in clock units (at least 1).
    pub len: u64,
    pub place: Place,
    /// Whether it holds a shared type (`ContentType`).
    pub is_type: bool,
}

/// What [`walk_update`] hands out, in update order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Struct(Struct),
    /// A range of its delete set.
    Deleted {
        id: Id,
        len: u64,
    },
}

/// Walks `bytes` as yjs would read them; see the module docs.
pub fn scan_update(bytes: &[u8]) -> Result<Shape, ScanError> {
    walk_update(bytes, |_| {})
}

/// [`scan_update`], handing every struct and deleted range to `on_part`.
pub fn walk_update(bytes: &[u8], mut on_part: impl FnMut(Part)) -> Result<Shape, ScanError> {
    let mut r = Reader { bytes, pos: 0 };
    let mut shape = Shape::default();
    let clients = r.count()?;
    for _ in 0..clients {
        let structs = r.count()?;
        let client = r.uint()?;
        let mut clock = r.uint()?;
        for _ in 0..structs {
            shape.structs += 1;
            let item = r.item(Id { client, clock })?;
            shape.types += usize::from(item.is_type);
            // yrs counts clocks in 32 bits.
            clock = clock
                .checked_add(item.len)
                .filter(|c| *c <= u64::from(u32::MAX))
                .ok_or(ScanError::IntegerOutOfRange)?;
            on_part(Part::Struct(item));
        }
    }
    let clients = r.count()?;
    for _ in 0..clients {
        let client = r.uint()?;
        let ranges = r.count()?;
        for _ in 0..ranges {
            let clock = r.uint()?;
            let len = r.len()?; // yjs cannot re-encode an empty range: it throws
            shape.deletes += 1;
            on_part(Part::Deleted {
                id: Id { client, clock },
                len,
            });
        }
    }
    Ok(shape)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, ScanError> {
        let b = *self.bytes.get(self.pos).ok_or(ScanError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ScanError> {
        let end = self.pos.checked_add(n).ok_or(ScanError::Truncated)?;
        let slice = self.bytes.get(self.pos..end).ok_or(ScanError::Truncated)?;
        self.pos = end;
        Ok(slice)
    }

    /// lib0 `readVarUint`: at most 53 bits.
    fn uint(&mut self) -> Result<u64, ScanError> {
        self.varint(0, 0)
    }

    /// lib0 `readVarInt`: a sign and 6 bits in the first byte.
    fn int(&mut self) -> Result<(), ScanError> {
        let first = self.byte()?;
        if first & 0x80 != 0 {
            self.varint(u64::from(first & 0x3f), 6)?;
        }
        Ok(())
    }

    /// Reads 7-bit groups from `shift` on into `value`, refusing more than
    /// a JavaScript number holds exactly.
    fn varint(&mut self, mut value: u64, mut shift: u32) -> Result<u64, ScanError> {
        loop {
            let b = self.byte()?;
            if shift > 56 {
                return Err(ScanError::IntegerOutOfRange);
            }
            value |= u64::from(b & 0x7f) << shift;
            if value > MAX_SAFE_INTEGER {
                return Err(ScanError::IntegerOutOfRange);
            }
            if b < 0x80 {
                return Ok(value);
            }
            shift += 7;
        }
    }

    /// A count of elements of at least one byte each: never more than the
    /// bytes left (which also bounds what yrs will allocate for them).
    fn count(&mut self) -> Result<usize, ScanError> {
        let n = self.uint()?;
        if n > (self.bytes.len() - self.pos) as u64 {
            return Err(ScanError::CountTooLarge);
        }
        Ok(n as usize)
    }

    /// A positive length (of a struct, or a deleted range).
    fn len(&mut self) -> Result<u64, ScanError> {
        match self.uint()? {
            0 => Err(ScanError::EmptyStruct),
            n if n > u64::from(u32::MAX) => Err(ScanError::IntegerOutOfRange),
            n => Ok(n),
        }
    }

    fn buf(&mut self) -> Result<&'a [u8], ScanError> {
        let n = self.count()?;
        self.take(n)
    }

    fn string(&mut self) -> Result<&'a str, ScanError> {
        let bytes = self.buf()?;
        std::str::from_utf8(bytes).map_err(|_| ScanError::BadString)
    }

    /// A JSON string as yjs's `JSON.parse` reads it.
    fn json(&mut self) -> Result<(), ScanError> {
        json_ok(self.string()?)
    }

    /// An id that the struct `id` refers to (origin, right origin, parent):
    /// one of the same client must come before the struct itself (yjs looks
    /// it up without waiting for it, and throws when it is not there).
    fn reference(&mut self, id: Id) -> Result<Id, ScanError> {
        let to = Id {
            client: self.uint()?,
            clock: self.uint()?,
        };
        if to.client == id.client && to.clock >= id.clock {
            return Err(ScanError::ForwardReference);
        }
        Ok(to)
    }

    /// One struct (`readClientsStructRefs`).
    fn item(&mut self, id: Id) -> Result<Struct, ScanError> {
        let info = self.byte()?;
        let place = match info & 0x1f {
            0 => Place::Gc,
            10 => Place::Skip,
            1..=9 => Place::Root, // read below
            other => return Err(ScanError::UnknownContent(other)),
        };
        if matches!(place, Place::Gc | Place::Skip) {
            let len = self.len()?;
            return Ok(Struct {
                id,
                len,
                place,
                is_type: false,
            });
        }
        let origin = (info & 0x80 != 0).then(|| self.reference(id)).transpose()?;
        let right = (info & 0x40 != 0).then(|| self.reference(id)).transpose()?;
        let place = if info & 0xc0 == 0 {
            let place = if self.uint()? == 1 {
                self.string()?; // root name
                Place::Root
            } else {
                Place::In(self.reference(id)?)
            };
            if info & 0x20 != 0 {
                self.string()?; // parent sub (map key)
            }
            place
        } else {
            Place::Beside { origin, right }
        };
        let (len, is_type) = self.content(info & 0x1f)?;
        Ok(Struct {
            id,
            len,
            place,
            is_type,
        })
    }

    /// `readItemContent`: the item's length (in yjs's units), and whether
    /// it holds a type.
    fn content(&mut self, kind: u8) -> Result<(u64, bool), ScanError> {
        let mut is_type = false;
        let len = match kind {
            1 => self.len()?,
            2 => {
                let n = self.count()?;
                for _ in 0..n {
                    let text = self.string()?;
                    if text != "undefined" {
                        json_ok(text)?;
                    }
                }
                n as u64
            }
            3 => {
                self.buf()?;
                1
            }
            // JavaScript strings count UTF-16 units.
            4 => self.string()?.encode_utf16().count() as u64,
            5 => {
                self.json()?;
                1
            }
            6 => {
                self.string()?;
                self.json()?;
                1
            }
            7 => {
                match self.uint()? {
                    3 => {
                        self.string()?; // element name
                    }
                    // yrs 0.28 does not read a hook's name, so it would
                    // mis-read everything after it.
                    5 => return Err(ScanError::Unsupported("Y.XmlHook")),
                    0..=6 => {}
                    other => return Err(ScanError::UnknownTypeRef(other)),
                }
                is_type = true;
                1
            }
            8 => {
                let n = self.count()?;
                for _ in 0..n {
                    self.any()?;
                }
                n as u64
            }
            9 => {
                self.string()?; // guid
                // yjs reads `opts.shouldLoad`: the options must be an object.
                if self.bytes.get(self.pos) != Some(&118) {
                    return Err(ScanError::BadDocOptions);
                }
                self.any()?;
                1
            }
            other => return Err(ScanError::UnknownContent(other)),
        };
        if len == 0 {
            return Err(ScanError::EmptyStruct);
        }
        Ok((len, is_type))
    }

    /// One lib0 `Any`, walked with an explicit stack of what each open
    /// array or object still holds.
    fn any(&mut self) -> Result<(), ScanError> {
        // (values left, whether each is preceded by a key)
        let mut open: Vec<(usize, bool)> = Vec::new();
        let mut pending = 1usize;
        let mut keyed = false;
        loop {
            while pending == 0 {
                match open.pop() {
                    Some((left, k)) => {
                        pending = left;
                        keyed = k;
                    }
                    None => return Ok(()),
                }
            }
            pending -= 1;
            if keyed {
                self.string()?;
            }
            match self.byte()? {
                127 | 126 | 121 | 120 => {}
                125 => self.int()?,
                124 => {
                    self.take(4)?;
                }
                123 | 122 => {
                    self.take(8)?;
                }
                119 => {
                    self.string()?;
                }
                116 => {
                    self.buf()?;
                }
                tag @ (118 | 117) => {
                    let n = self.count()?;
                    if open.len() >= MAX_VALUE_DEPTH {
                        return Err(ScanError::TooDeep);
                    }
                    open.push((pending, keyed));
                    pending = n;
                    keyed = tag == 118;
                }
                other => return Err(ScanError::UnknownValue(other)),
            }
        }
    }
}

/// JSON text as `JSON.parse` reads it, nested at most [`MAX_VALUE_DEPTH`]
/// deep (counted before parsing).
fn json_ok(text: &str) -> Result<(), ScanError> {
    json_depth_ok(text)?;
    serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|_| ScanError::BadJson)?;
    Ok(())
}

/// Refuses JSON text nested deeper than [`MAX_VALUE_DEPTH`] without parsing
/// it (brackets outside strings).
fn json_depth_ok(text: &str) -> Result<(), ScanError> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_VALUE_DEPTH {
                    return Err(ScanError::TooDeep);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
