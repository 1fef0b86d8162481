//! A decoder for pgoutput, PostgreSQL's logical replication message format,
//! protocol version 1, following "Logical Replication Message Formats"
//! (chapter 55.9 of the PostgreSQL 15 documentation) one to one.
//!
//! Each XLogData payload holds one message, starting with its tag byte.
//! Integers are big-endian; strings are NUL-terminated; tuple values borrow
//! from the input (decoding an Insert allocates one small vector). No input
//! can make it panic: every read is checked, counts are bounded by the bytes
//! left before anything is allocated, and every malformed message is a
//! [`DecodeError`] naming the byte offset where it went wrong.

use crate::source::lsn::Lsn;

/// A decoded message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message<'a> {
    /// 'B': a transaction starts.
    Begin(Begin),
    /// 'C': a transaction committed.
    Commit(Commit),
    /// 'O': the transaction came from this replication origin.
    Origin(Origin<'a>),
    /// 'R': a relation's description (sent before its first change).
    Relation(Relation<'a>),
    /// 'Y': a data type's name.
    Type(Type<'a>),
    /// 'I': a row was inserted.
    Insert(Insert<'a>),
    /// 'U': a row was updated.
    Update(Update<'a>),
    /// 'D': a row was deleted.
    Delete(Delete<'a>),
    /// 'T': tables were truncated.
    Truncate(Truncate),
    /// 'M': a logical decoding message (`pg_logical_emit_message`).
    Message(LogicalMessage<'a>),
}

impl Message<'_> {
    /// The tag byte of this kind of message.
    pub fn tag(&self) -> u8 {
        match self {
            Message::Begin(_) => b'B',
            Message::Commit(_) => b'C',
            Message::Origin(_) => b'O',
            Message::Relation(_) => b'R',
            Message::Type(_) => b'Y',
            Message::Insert(_) => b'I',
            Message::Update(_) => b'U',
            Message::Delete(_) => b'D',
            Message::Truncate(_) => b'T',
            Message::Message(_) => b'M',
        }
    }
}

/// 'B'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    /// The final LSN of the transaction.
    pub final_lsn: Lsn,
    /// Commit timestamp, microseconds since 2000-01-01.
    pub timestamp: i64,
    /// Transaction id.
    pub xid: u32,
}

/// 'C'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// Flags (currently unused, 0).
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// End LSN of the transaction: what to confirm once it is processed.
    pub end_lsn: Lsn,
    /// Commit timestamp, microseconds since 2000-01-01.
    pub timestamp: i64,
}

/// 'O'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin<'a> {
    /// LSN of the commit on the origin server.
    pub commit_lsn: Lsn,
    /// The origin's name.
    pub name: &'a str,
}

/// A column of a 'R' message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelationColumn<'a> {
    /// Flags: 1 marks a column of the key (replica identity).
    pub flags: u8,
    /// Column name.
    pub name: &'a str,
    /// Data type oid.
    pub type_oid: u32,
    /// Type modifier.
    pub type_modifier: i32,
}

impl RelationColumn<'_> {
    /// Whether the column is part of the key.
    pub fn is_key(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// 'R'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation<'a> {
    /// Relation oid (what the row messages refer to).
    pub id: u32,
    /// Schema ("" is pg_catalog).
    pub namespace: &'a str,
    /// Relation name.
    pub name: &'a str,
    /// Replica identity: b'd' default, b'n' nothing, b'f' full, b'i' index.
    pub replica_identity: u8,
    /// The published columns.
    pub columns: Vec<RelationColumn<'a>>,
}

/// 'Y'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Type<'a> {
    /// Type oid.
    pub id: u32,
    /// Schema ("" is pg_catalog).
    pub namespace: &'a str,
    /// Type name.
    pub name: &'a str,
}

/// One column value of a tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column<'a> {
    /// 'n': NULL.
    Null,
    /// 'u': an unchanged TOASTed value (not sent).
    UnchangedToast,
    /// 't': the value in text format.
    Text(&'a [u8]),
    /// 'b': the value in binary format.
    Binary(&'a [u8]),
}

impl<'a> Column<'a> {
    /// The text value as UTF-8, when this is a text value.
    pub fn as_str(&self) -> Option<Result<&'a str, std::str::Utf8Error>> {
        match self {
            Column::Text(b) => Some(std::str::from_utf8(b)),
            _ => None,
        }
    }
}

/// TupleData: the columns of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TupleData<'a> {
    /// One value per column of the relation.
    pub columns: Vec<Column<'a>>,
}

/// 'I'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert<'a> {
    /// Relation oid.
    pub relation_id: u32,
    /// The new row.
    pub new: TupleData<'a>,
}

/// Which old row an Update or Delete carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldKind {
    /// 'K': the old key columns (replica identity DEFAULT or INDEX).
    Key,
    /// 'O': the whole old row (replica identity FULL).
    Old,
}

/// 'U'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update<'a> {
    /// Relation oid.
    pub relation_id: u32,
    /// The old key or row, when the key changed or the identity is FULL.
    pub old: Option<TupleData<'a>>,
    /// Which of the two `old` is.
    pub old_kind: Option<OldKind>,
    /// The new row.
    pub new: TupleData<'a>,
}

/// 'D'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete<'a> {
    /// Relation oid.
    pub relation_id: u32,
    /// Which kind of old data this is.
    pub old_kind: OldKind,
    /// The old key or row.
    pub old: TupleData<'a>,
}

/// 'T'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// Option bits: 1 CASCADE, 2 RESTART IDENTITY.
    pub options: u8,
    /// The truncated relations.
    pub relation_ids: Vec<u32>,
}

/// 'M'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogicalMessage<'a> {
    /// Flags: 1 when transactional.
    pub flags: u8,
    /// LSN of the message.
    pub lsn: Lsn,
    /// The prefix.
    pub prefix: &'a str,
    /// The content.
    pub content: &'a [u8],
}

/// A message that does not follow the format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended inside a field.
    #[error("truncated message: {what} needs {needed} byte(s) at offset {offset}, {available} left")]
    Truncated {
        /// Where the field starts.
        offset: usize,
        /// Its size.
        needed: usize,
        /// What is left.
        available: usize,
        /// The field.
        what: &'static str,
    },
    /// An empty payload.
    #[error("empty message")]
    Empty,
    /// A tag this decoder does not know, including the protocol version 2+ tags (streaming, two-phase).
    #[error("unknown message tag {tag:#04x} ({}) at offset {offset}", char::from(*tag).escape_default())]
    UnknownTag {
        /// Where.
        offset: usize,
        /// The tag.
        tag: u8,
    },
    /// A tuple column kind other than n, u, t, b.
    #[error("unknown tuple column kind {kind:#04x} at offset {offset}")]
    BadColumnKind {
        /// Where.
        offset: usize,
        /// The kind byte.
        kind: u8,
    },
    /// An Update/Delete marker other than the ones allowed.
    #[error("expected {expected} at offset {offset}, found {found:#04x}")]
    BadMarker {
        /// Where.
        offset: usize,
        /// What was allowed.
        expected: &'static str,
        /// What came.
        found: u8,
    },
    /// A string without its terminating NUL.
    #[error("{what} at offset {offset} has no terminating NUL")]
    MissingNul {
        /// Where the string starts.
        offset: usize,
        /// The field.
        what: &'static str,
    },
    /// A string that is not UTF-8.
    #[error("{what} at offset {offset} is not UTF-8")]
    BadUtf8 {
        /// Where the string starts.
        offset: usize,
        /// The field.
        what: &'static str,
    },
    /// A negative length or count.
    #[error("{what} at offset {offset} is negative ({value})")]
    Negative {
        /// Where.
        offset: usize,
        /// The value.
        value: i64,
        /// The field.
        what: &'static str,
    },
    /// Bytes left after a complete message.
    #[error("{len} unexpected byte(s) after the message at offset {offset}")]
    TrailingBytes {
        /// Where they start.
        offset: usize,
        /// How many.
        len: usize,
    },
}

/// A checked reader over the message bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// The bytes not read yet (empty, never a panic, should `pos` ever pass the end).
    fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or(&[])
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let rest = self.rest();
        let Some(s) = rest.get(..n) else {
            return Err(DecodeError::Truncated { offset: self.pos, needed: n, available: rest.len(), what });
        };
        self.pos = self.pos.saturating_add(n);
        Ok(s)
    }

    /// A fixed-size field.
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let rest = self.rest();
        let Some(a) = rest.first_chunk::<N>() else {
            return Err(DecodeError::Truncated { offset: self.pos, needed: N, available: rest.len(), what });
        };
        self.pos = self.pos.saturating_add(N);
        Ok(*a)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.array(what)?))
    }

    fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(what)?))
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    fn lsn(&mut self, what: &'static str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.array(what)?)))
    }

    /// A NUL-terminated UTF-8 string; the NUL is consumed, not returned.
    fn string(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let start = self.pos;
        let rest = self.rest();
        let Some((bytes, _nul_and_after)) =
            rest.iter().position(|&b| b == 0).and_then(|end| rest.split_at_checked(end))
        else {
            return Err(DecodeError::MissingNul { offset: start, what });
        };
        let s = std::str::from_utf8(bytes).map_err(|_| DecodeError::BadUtf8 { offset: start, what })?;
        self.pos = self.pos.saturating_add(bytes.len()).saturating_add(1);
        Ok(s)
    }

    /// A count that must fit in what is left, `min_each` bytes per item: checked before anything is
    /// allocated, so a forged count cannot cause a large allocation.
    fn count(&mut self, value: i64, offset: usize, min_each: usize, what: &'static str) -> Result<usize, DecodeError> {
        let Ok(n) = usize::try_from(value) else {
            return Err(DecodeError::Negative { offset, value, what });
        };
        let available = self.rest().len();
        let needed = n.saturating_mul(min_each);
        if needed > available {
            return Err(DecodeError::Truncated { offset: self.pos, needed, available, what });
        }
        Ok(n)
    }

    /// A length field's value as a byte count (negative is an error: v1 never sends -1 here).
    fn length(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let at = self.pos;
        let len = self.i32(what)?;
        usize::try_from(len).map_err(|_| DecodeError::Negative { offset: at, value: i64::from(len), what })
    }

    fn end(&self) -> Result<(), DecodeError> {
        match self.rest().len() {
            0 => Ok(()),
            len => Err(DecodeError::TrailingBytes { offset: self.pos, len }),
        }
    }
}

/// Decodes one pgoutput message: the payload of one XLogData ('w') message, starting with the tag byte.
///
/// The whole input must be exactly one message: bytes after it are [`DecodeError::TrailingBytes`].
/// Protocol version 2+ messages (streaming 'S', 'E', 'c', 'A'; two-phase 'b', 'P', 'K', 'r', 'p') are
/// [`DecodeError::UnknownTag`]: start the slot with `proto_version '1'` and they are never sent.
pub fn decode(buf: &[u8]) -> Result<Message<'_>, DecodeError> {
    let Some(&tag) = buf.first() else {
        return Err(DecodeError::Empty);
    };
    let mut r = Reader { buf, pos: 1 };
    let msg = match tag {
        b'B' => Message::Begin(parse_begin(&mut r)?),
        b'C' => Message::Commit(parse_commit(&mut r)?),
        b'O' => Message::Origin(parse_origin(&mut r)?),
        b'R' => Message::Relation(parse_relation(&mut r)?),
        b'Y' => Message::Type(parse_type(&mut r)?),
        b'I' => Message::Insert(parse_insert(&mut r)?),
        b'U' => Message::Update(parse_update(&mut r)?),
        b'D' => Message::Delete(parse_delete(&mut r)?),
        b'T' => Message::Truncate(parse_truncate(&mut r)?),
        b'M' => Message::Message(parse_message(&mut r)?),
        tag => return Err(DecodeError::UnknownTag { offset: 0, tag }),
    };
    r.end()?;
    Ok(msg)
}

fn parse_begin(r: &mut Reader<'_>) -> Result<Begin, DecodeError> {
    Ok(Begin { final_lsn: r.lsn("final LSN")?, timestamp: r.i64("commit timestamp")?, xid: r.u32("xid")? })
}

fn parse_commit(r: &mut Reader<'_>) -> Result<Commit, DecodeError> {
    Ok(Commit {
        flags: r.u8("flags")?,
        commit_lsn: r.lsn("commit LSN")?,
        end_lsn: r.lsn("end LSN")?,
        timestamp: r.i64("commit timestamp")?,
    })
}

fn parse_origin<'a>(r: &mut Reader<'a>) -> Result<Origin<'a>, DecodeError> {
    Ok(Origin { commit_lsn: r.lsn("origin commit LSN")?, name: r.string("origin name")? })
}

fn parse_relation<'a>(r: &mut Reader<'a>) -> Result<Relation<'a>, DecodeError> {
    let id = r.u32("relation id")?;
    let namespace = r.string("namespace")?;
    let name = r.string("relation name")?;
    let replica_identity = r.u8("replica identity")?;
    let at = r.pos;
    let n = r.i16("column count")?;
    // Each column: flags, a name of at least its NUL, type oid, modifier.
    let n = r.count(i64::from(n), at, 10, "column count")?;
    let mut columns = Vec::with_capacity(n);
    for _ in 0..n {
        columns.push(RelationColumn {
            flags: r.u8("column flags")?,
            name: r.string("column name")?,
            type_oid: r.u32("column type")?,
            type_modifier: r.i32("column type modifier")?,
        });
    }
    Ok(Relation { id, namespace, name, replica_identity, columns })
}

fn parse_type<'a>(r: &mut Reader<'a>) -> Result<Type<'a>, DecodeError> {
    Ok(Type { id: r.u32("type id")?, namespace: r.string("type namespace")?, name: r.string("type name")? })
}

fn parse_tuple<'a>(r: &mut Reader<'a>) -> Result<TupleData<'a>, DecodeError> {
    let at = r.pos;
    let n = r.i16("tuple column count")?;
    let n = r.count(i64::from(n), at, 1, "tuple column count")?;
    let mut columns = Vec::with_capacity(n);
    for _ in 0..n {
        let at = r.pos;
        let kind = r.u8("column kind")?;
        columns.push(match kind {
            b'n' => Column::Null,
            b'u' => Column::UnchangedToast,
            b't' | b'b' => {
                let len = r.length("column length")?;
                let data = r.take(len, "column value")?;
                if kind == b't' {
                    Column::Text(data)
                } else {
                    Column::Binary(data)
                }
            }
            kind => return Err(DecodeError::BadColumnKind { offset: at, kind }),
        });
    }
    Ok(TupleData { columns })
}

fn expect_marker(r: &mut Reader<'_>, allowed: &[u8], expected: &'static str) -> Result<u8, DecodeError> {
    let at = r.pos;
    let m = r.u8(expected)?;
    if allowed.contains(&m) {
        Ok(m)
    } else {
        Err(DecodeError::BadMarker { offset: at, expected, found: m })
    }
}

fn parse_insert<'a>(r: &mut Reader<'a>) -> Result<Insert<'a>, DecodeError> {
    let relation_id = r.u32("relation id")?;
    expect_marker(r, b"N", "'N' (new tuple)")?;
    Ok(Insert { relation_id, new: parse_tuple(r)? })
}

fn parse_update<'a>(r: &mut Reader<'a>) -> Result<Update<'a>, DecodeError> {
    let relation_id = r.u32("relation id")?;
    let m = expect_marker(r, b"KON", "'K', 'O' or 'N'")?;
    let (old, old_kind) = match m {
        b'K' | b'O' => {
            let old = parse_tuple(r)?;
            expect_marker(r, b"N", "'N' (new tuple)")?;
            (Some(old), Some(if m == b'K' { OldKind::Key } else { OldKind::Old }))
        }
        _ => (None, None),
    };
    Ok(Update { relation_id, old, old_kind, new: parse_tuple(r)? })
}

fn parse_delete<'a>(r: &mut Reader<'a>) -> Result<Delete<'a>, DecodeError> {
    let relation_id = r.u32("relation id")?;
    let m = expect_marker(r, b"KO", "'K' or 'O'")?;
    let old_kind = if m == b'K' { OldKind::Key } else { OldKind::Old };
    Ok(Delete { relation_id, old_kind, old: parse_tuple(r)? })
}

fn parse_truncate(r: &mut Reader<'_>) -> Result<Truncate, DecodeError> {
    let at = r.pos;
    let n = r.i32("relation count")?;
    let options = r.u8("truncate options")?;
    let n = r.count(i64::from(n), at, 4, "relation count")?;
    let mut relation_ids = Vec::with_capacity(n);
    for _ in 0..n {
        relation_ids.push(r.u32("relation id")?);
    }
    Ok(Truncate { options, relation_ids })
}

fn parse_message<'a>(r: &mut Reader<'a>) -> Result<LogicalMessage<'a>, DecodeError> {
    let flags = r.u8("message flags")?;
    let lsn = r.lsn("message LSN")?;
    let prefix = r.string("message prefix")?;
    let len = r.length("content length")?;
    let content = r.take(len, "message content")?;
    Ok(LogicalMessage { flags, lsn, prefix, content })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Builds messages byte by byte, as the protocol document lays them out.
    #[derive(Default)]
    struct B(Vec<u8>);
    impl B {
        fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        fn i16(mut self, v: i16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i64(mut self, v: i64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn s(mut self, v: &str) -> Self {
            self.0.extend_from_slice(v.as_bytes());
            self.0.push(0);
            self
        }
        fn bytes(mut self, v: &[u8]) -> Self {
            self.0.extend_from_slice(v);
            self
        }
        fn text(self, v: &str) -> Self {
            self.u8(b't').i32(v.len() as i32).bytes(v.as_bytes())
        }
    }

    fn fixtures() -> Vec<Vec<u8>> {
        vec![
            B::default().u8(b'B').i64(0x1_0000_0010).i64(123_456).i32(777).0,
            B::default().u8(b'C').u8(0).i64(0x20).i64(0x28).i64(99).0,
            B::default().u8(b'O').i64(0x30).s("syncbridge").0,
            B::default()
                .u8(b'R')
                .i32(16384)
                .s("public")
                .s("items")
                .u8(b'd')
                .i16(2)
                .u8(1)
                .s("id")
                .i32(23)
                .i32(-1)
                .u8(0)
                .s("title")
                .i32(25)
                .i32(-1)
                .0,
            B::default().u8(b'Y').i32(90001).s("public").s("mood").0,
            B::default().u8(b'I').i32(16384).u8(b'N').i16(3).text("42").u8(b'n').u8(b'u').0,
            B::default().u8(b'U').i32(16384).u8(b'N').i16(1).text("1").0,
            B::default().u8(b'U').i32(16384).u8(b'K').i16(1).text("1").u8(b'N').i16(1).text("2").0,
            B::default().u8(b'U').i32(16384).u8(b'O').i16(2).text("1").u8(b'n').u8(b'N').i16(2).text("1").text("x").0,
            B::default().u8(b'D').i32(16384).u8(b'K').i16(1).text("9").0,
            B::default().u8(b'D').i32(16384).u8(b'O').i16(2).text("9").u8(b'b').i32(2).bytes(&[0, 1]).0,
            B::default().u8(b'T').i32(2).u8(3).i32(16384).i32(16390).0,
            B::default().u8(b'M').u8(1).i64(0x40).s("sb").i32(3).bytes(b"abc").0,
        ]
    }

    #[test]
    fn begin() {
        let f = fixtures();
        let m = decode(&f[0]).unwrap();
        assert_eq!(m, Message::Begin(Begin { final_lsn: Lsn(0x1_0000_0010), timestamp: 123_456, xid: 777 }));
        assert_eq!(m.tag(), b'B');
    }

    #[test]
    fn commit() {
        let f = fixtures();
        assert_eq!(
            decode(&f[1]).unwrap(),
            Message::Commit(Commit { flags: 0, commit_lsn: Lsn(0x20), end_lsn: Lsn(0x28), timestamp: 99 })
        );
    }

    #[test]
    fn origin() {
        let f = fixtures();
        assert_eq!(decode(&f[2]).unwrap(), Message::Origin(Origin { commit_lsn: Lsn(0x30), name: "syncbridge" }));
    }

    #[test]
    fn relation() {
        let f = fixtures();
        let Message::Relation(r) = decode(&f[3]).unwrap() else { panic!("not a relation") };
        assert_eq!((r.id, r.namespace, r.name, r.replica_identity), (16384, "public", "items", b'd'));
        assert_eq!(r.columns.len(), 2);
        assert_eq!(r.columns[0], RelationColumn { flags: 1, name: "id", type_oid: 23, type_modifier: -1 });
        assert!(r.columns[0].is_key() && !r.columns[1].is_key());
        assert_eq!(r.columns[1].name, "title");
    }

    #[test]
    fn type_message() {
        let f = fixtures();
        assert_eq!(decode(&f[4]).unwrap(), Message::Type(Type { id: 90001, namespace: "public", name: "mood" }));
    }

    #[test]
    fn insert_with_every_column_kind() {
        let f = fixtures();
        let Message::Insert(i) = decode(&f[5]).unwrap() else { panic!("not an insert") };
        assert_eq!(i.relation_id, 16384);
        assert_eq!(i.new.columns, vec![Column::Text(b"42"), Column::Null, Column::UnchangedToast]);
        assert_eq!(i.new.columns[0].as_str().unwrap().unwrap(), "42");
        assert!(i.new.columns[1].as_str().is_none());
    }

    #[test]
    fn updates_new_only_old_key_and_old_tuple() {
        let f = fixtures();
        let Message::Update(u) = decode(&f[6]).unwrap() else { panic!() };
        assert_eq!((u.old, u.old_kind), (None, None));
        assert_eq!(u.new.columns, vec![Column::Text(b"1")]);
        let Message::Update(u) = decode(&f[7]).unwrap() else { panic!() };
        assert_eq!(u.old_kind, Some(OldKind::Key));
        assert_eq!(u.old.unwrap().columns, vec![Column::Text(b"1")]);
        assert_eq!(u.new.columns, vec![Column::Text(b"2")]);
        let Message::Update(u) = decode(&f[8]).unwrap() else { panic!() };
        assert_eq!(u.old_kind, Some(OldKind::Old));
        assert_eq!(u.old.unwrap().columns, vec![Column::Text(b"1"), Column::Null]);
        assert_eq!(u.new.columns, vec![Column::Text(b"1"), Column::Text(b"x")]);
    }

    #[test]
    fn deletes_by_key_and_by_old_tuple() {
        let f = fixtures();
        let Message::Delete(d) = decode(&f[9]).unwrap() else { panic!() };
        assert_eq!((d.relation_id, d.old_kind), (16384, OldKind::Key));
        assert_eq!(d.old.columns, vec![Column::Text(b"9")]);
        let Message::Delete(d) = decode(&f[10]).unwrap() else { panic!() };
        assert_eq!(d.old_kind, OldKind::Old);
        assert_eq!(d.old.columns, vec![Column::Text(b"9"), Column::Binary(&[0, 1])]);
    }

    #[test]
    fn truncate() {
        let f = fixtures();
        assert_eq!(
            decode(&f[11]).unwrap(),
            Message::Truncate(Truncate { options: 3, relation_ids: vec![16384, 16390] })
        );
    }

    #[test]
    fn logical_message() {
        let f = fixtures();
        assert_eq!(
            decode(&f[12]).unwrap(),
            Message::Message(LogicalMessage { flags: 1, lsn: Lsn(0x40), prefix: "sb", content: b"abc" })
        );
    }

    #[test]
    fn errors_name_the_offset() {
        assert_eq!(decode(&[]), Err(DecodeError::Empty));
        assert_eq!(decode(b"S\0\0\0\x01"), Err(DecodeError::UnknownTag { offset: 0, tag: b'S' }));
        // A Begin cut inside its xid.
        let mut b = fixtures()[0].clone();
        b.truncate(19);
        assert_eq!(decode(&b), Err(DecodeError::Truncated { offset: 17, needed: 4, available: 2, what: "xid" }));
        // Trailing garbage.
        let mut c = fixtures()[1].clone();
        c.push(0);
        assert_eq!(decode(&c), Err(DecodeError::TrailingBytes { offset: 26, len: 1 }));
        // A bad column kind.
        let i = B::default().u8(b'I').i32(1).u8(b'N').i16(1).u8(b'x').0;
        assert_eq!(decode(&i), Err(DecodeError::BadColumnKind { offset: 8, kind: b'x' }));
        // A bad marker.
        let u = B::default().u8(b'U').i32(1).u8(b'Z').0;
        assert!(matches!(decode(&u), Err(DecodeError::BadMarker { offset: 5, found: b'Z', .. })));
        // A negative length.
        let n = B::default().u8(b'I').i32(1).u8(b'N').i16(1).u8(b't').i32(-5).0;
        assert_eq!(decode(&n), Err(DecodeError::Negative { offset: 9, value: -5, what: "column length" }));
        // A string without NUL, and one that is not UTF-8.
        let o = B::default().u8(b'O').i64(1).bytes(b"abc").0;
        assert_eq!(decode(&o), Err(DecodeError::MissingNul { offset: 9, what: "origin name" }));
        let o = B::default().u8(b'O').i64(1).bytes(&[0xff, 0]).0;
        assert_eq!(decode(&o), Err(DecodeError::BadUtf8 { offset: 9, what: "origin name" }));
        // A count larger than the bytes left is refused before allocating.
        let t = B::default().u8(b'T').i32(i32::MAX).u8(0).0;
        assert!(matches!(decode(&t), Err(DecodeError::Truncated { what: "relation count", .. })));
        let t = B::default().u8(b'T').i32(-1).u8(0).0;
        assert!(matches!(decode(&t), Err(DecodeError::Negative { offset: 1, .. })));
        // Every error has a message that names the offset.
        assert!(decode(&b).unwrap_err().to_string().contains("offset 17"));
    }

    #[test]
    fn protocol_v2_and_two_phase_tags_are_unknown() {
        for tag in *b"SEcAbPKrp" {
            assert_eq!(decode(&[tag, 0, 0, 0, 1]), Err(DecodeError::UnknownTag { offset: 0, tag }));
        }
    }

    #[test]
    fn more_errors_with_their_offsets() {
        // Insert without its 'N', Delete with 'N' instead of 'K'/'O', Update whose old tuple is not followed by 'N'.
        let i = B::default().u8(b'I').i32(1).u8(b'K').i16(0).0;
        assert!(matches!(decode(&i), Err(DecodeError::BadMarker { offset: 5, found: b'K', .. })));
        let d = B::default().u8(b'D').i32(1).u8(b'N').i16(0).0;
        assert!(matches!(decode(&d), Err(DecodeError::BadMarker { offset: 5, found: b'N', .. })));
        let u = B::default().u8(b'U').i32(1).u8(b'K').i16(1).u8(b'n').u8(b'K').i16(0).0;
        assert!(matches!(decode(&u), Err(DecodeError::BadMarker { offset: 9, found: b'K', .. })));
        // A Relation claiming 32767 columns in 10 bytes is refused before allocating.
        let r = B::default().u8(b'R').i32(1).s("").s("t").u8(b'd').i16(i16::MAX).bytes(&[0; 10]).0;
        assert_eq!(
            decode(&r),
            Err(DecodeError::Truncated { offset: 11, needed: 327_670, available: 10, what: "column count" })
        );
        let r = B::default().u8(b'R').i32(1).s("").s("t").u8(b'd').i16(-1).0;
        assert_eq!(decode(&r), Err(DecodeError::Negative { offset: 9, value: -1, what: "column count" }));
        // A tuple claiming more columns than bytes left, and a negative tuple column count.
        let t = B::default().u8(b'I').i32(1).u8(b'N').i16(5).u8(b'n').0;
        assert_eq!(
            decode(&t),
            Err(DecodeError::Truncated { offset: 8, needed: 5, available: 1, what: "tuple column count" })
        );
        let t = B::default().u8(b'I').i32(1).u8(b'N').i16(-2).0;
        assert_eq!(decode(&t), Err(DecodeError::Negative { offset: 6, value: -2, what: "tuple column count" }));
        // A Truncate with i32::MAX relations.
        let t = B::default().u8(b'T').i32(i32::MAX).u8(0).i32(1).0;
        assert_eq!(
            decode(&t),
            Err(DecodeError::Truncated {
                offset: 6,
                needed: 4 * i32::MAX as usize,
                available: 4,
                what: "relation count"
            })
        );
        // A value longer than what is left, a negative or oversized message content.
        let v = B::default().u8(b'I').i32(1).u8(b'N').i16(1).u8(b'b').i32(i32::MAX).bytes(b"ab").0;
        assert_eq!(
            decode(&v),
            Err(DecodeError::Truncated { offset: 13, needed: i32::MAX as usize, available: 2, what: "column value" })
        );
        let m = B::default().u8(b'M').u8(0).i64(1).s("p").i32(-1).0;
        assert_eq!(decode(&m), Err(DecodeError::Negative { offset: 12, value: -1, what: "content length" }));
        let m = B::default().u8(b'M').u8(0).i64(1).s("p").i32(4).bytes(b"abc").0;
        assert_eq!(
            decode(&m),
            Err(DecodeError::Truncated { offset: 16, needed: 4, available: 3, what: "message content" })
        );
        // Missing NULs in the second string of a Relation and a Type, bad UTF-8 in a column name.
        let r = B::default().u8(b'R').i32(1).s("public").bytes(b"items").0;
        assert_eq!(decode(&r), Err(DecodeError::MissingNul { offset: 12, what: "relation name" }));
        let y = B::default().u8(b'Y').i32(1).s("").bytes(b"t").0;
        assert_eq!(decode(&y), Err(DecodeError::MissingNul { offset: 6, what: "type name" }));
        let r = B::default().u8(b'R').i32(1).s("").s("t").u8(b'd').i16(1).u8(0).bytes(&[0xc3, 0x28, 0]).i64(0).0;
        assert_eq!(decode(&r), Err(DecodeError::BadUtf8 { offset: 12, what: "column name" }));
        // A lone tag, and trailing bytes after every kind of valid message.
        assert!(matches!(decode(b"B"), Err(DecodeError::Truncated { offset: 1, needed: 8, available: 0, .. })));
        for f in fixtures() {
            let mut g = f.clone();
            g.extend_from_slice(b"xy");
            assert_eq!(decode(&g), Err(DecodeError::TrailingBytes { offset: f.len(), len: 2 }));
        }
    }

    #[test]
    fn text_columns_as_str() {
        assert_eq!(Column::Text(b"abc").as_str(), Some(Ok("abc")));
        assert!(matches!(Column::Text(&[0xff]).as_str(), Some(Err(_))));
        assert_eq!(Column::Binary(b"abc").as_str(), None);
        assert_eq!(Column::UnchangedToast.as_str(), None);
    }

    #[test]
    fn every_prefix_and_every_bit_flip_of_every_fixture() {
        // Exhaustive and deterministic: complements the random cases below.
        for f in fixtures() {
            assert!(decode(&f).is_ok());
            for cut in 0..f.len() {
                assert!(decode(&f[..cut]).is_err(), "prefix of {} bytes of {:?} decoded", cut, f);
            }
            for i in 0..f.len() {
                for bit in 0..8 {
                    let mut g = f.clone();
                    if let Some(b) = g.get_mut(i) {
                        *b ^= 1 << bit;
                    }
                    let _ = decode(&g);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn arbitrary_bytes_after_a_valid_tag_never_panic(
            tag in proptest::sample::select(b"BCORYIUDTM".to_vec()),
            rest in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            let mut b = vec![tag];
            b.extend(rest);
            let _ = decode(&b);
        }

        #[test]
        fn truncated_and_flipped_fixtures_never_panic(which in 0usize..13, cut in 0usize..64, flip in 0usize..64, bit in 0u8..8) {
            let all = fixtures();
            let f = &all[which];
            let cut = cut.min(f.len());
            // Every strict prefix is an error, never a panic.
            if cut < f.len() {
                prop_assert!(decode(&f[..cut]).is_err());
            }
            let mut g = f.clone();
            let i = flip % g.len();
            g[i] ^= 1 << bit;
            let _ = decode(&g);
        }
    }
}
