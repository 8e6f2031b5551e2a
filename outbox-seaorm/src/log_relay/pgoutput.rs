//! The two pgoutput (protocol version 1) messages the log relay decodes itself: `Relation`, which
//! names a table's columns, and `Insert`, a new row as text. The replication client parses
//! `Begin`, `Commit` and logical decoding messages; everything else is skipped.

use std::collections::HashMap;

/// Why a pgoutput message did not decode.
#[derive(Debug, thiserror::Error)]
#[error("malformed pgoutput {kind} message: {what}")]
pub(crate) struct Malformed {
    kind: &'static str,
    what: &'static str,
}

/// A decoded message the log relay acts on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// A table's description (sent before the first change of it in each session).
    Relation(Relation),
    /// A new row of relation `relation`: each column as text, `None` for `NULL`.
    Insert {
        relation: u32,
        values: Vec<Option<String>>,
    },
    /// Anything else (updates, deletes, truncates, types, origins): not ours.
    Other,
}

/// A table as pgoutput describes it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Relation {
    pub(crate) id: u32,
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) columns: Vec<String>,
}

/// Decodes one pgoutput message.
///
/// # Errors
/// [`Malformed`] when the bytes end early or hold what protocol version 1 does not.
pub(crate) fn decode(data: &[u8]) -> Result<Change, Malformed> {
    let Some((&tag, rest)) = data.split_first() else {
        return Err(Malformed {
            kind: "empty",
            what: "no message type",
        });
    };
    match tag {
        b'R' => relation(&mut Reader::new(rest, "Relation")).map(Change::Relation),
        b'I' => insert(&mut Reader::new(rest, "Insert")),
        _ => Ok(Change::Other),
    }
}

fn relation(r: &mut Reader<'_>) -> Result<Relation, Malformed> {
    let id = r.u32()?;
    let namespace = r.cstring()?;
    let name = r.cstring()?;
    let _replica_identity = r.u8()?;
    let count = r.u16()?;
    let mut columns = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let _flags = r.u8()?;
        columns.push(r.cstring()?);
        let _type = r.u32()?;
        let _modifier = r.u32()?;
    }
    Ok(Relation {
        id,
        namespace,
        name,
        columns,
    })
}

fn insert(r: &mut Reader<'_>) -> Result<Change, Malformed> {
    let relation = r.u32()?;
    if r.u8()? != b'N' {
        return Err(r.malformed("no new tuple"));
    }
    let count = r.u16()?;
    let mut values = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        match r.u8()? {
            b'n' | b'u' => values.push(None),
            b't' => {
                let len = r.u32()? as usize;
                let bytes = r.take(len)?;
                let text = std::str::from_utf8(bytes).map_err(|_| r.malformed("text not UTF-8"))?;
                values.push(Some(text.to_owned()));
            }
            _ => return Err(r.malformed("a column neither text nor null")),
        }
    }
    Ok(Change::Insert { relation, values })
}

struct Reader<'a> {
    data: &'a [u8],
    kind: &'static str,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8], kind: &'static str) -> Self {
        Reader { data, kind }
    }

    fn malformed(&self, what: &'static str) -> Malformed {
        Malformed {
            kind: self.kind,
            what,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.data.len() < n {
            return Err(self.malformed("ends early"));
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Malformed> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn cstring(&mut self) -> Result<String, Malformed> {
        let Some(end) = self.data.iter().position(|&b| b == 0) else {
            return Err(self.malformed("unterminated string"));
        };
        let bytes = self.take(end + 1)?;
        std::str::from_utf8(&bytes[..end])
            .map(str::to_owned)
            .map_err(|_| self.malformed("name not UTF-8"))
    }
}

/// The relations of one replication session, by id.
#[derive(Debug, Default)]
pub(crate) struct Relations {
    by_id: HashMap<u32, Relation>,
}

impl Relations {
    /// Remembers (or replaces) `relation`.
    pub(crate) fn learn(&mut self, relation: Relation) {
        self.by_id.insert(relation.id, relation);
    }

    /// The relation with id `id`, if the session described it.
    pub(crate) fn get(&self, id: u32) -> Option<&Relation> {
        self.by_id.get(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    #[test]
    fn decodes_a_relation_and_an_insert() {
        let mut r = vec![b'R'];
        r.extend_from_slice(&16_384u32.to_be_bytes());
        cstr(&mut r, "public");
        cstr(&mut r, "outbox");
        r.push(b'd');
        r.extend_from_slice(&2u16.to_be_bytes());
        for name in ["id", "topic"] {
            r.push(0);
            cstr(&mut r, name);
            r.extend_from_slice(&25u32.to_be_bytes());
            r.extend_from_slice(&u32::MAX.to_be_bytes());
        }
        let Change::Relation(relation) = decode(&r).unwrap() else {
            panic!("not a relation");
        };
        assert_eq!(relation.id, 16_384);
        assert_eq!(relation.namespace, "public");
        assert_eq!(relation.name, "outbox");
        assert_eq!(relation.columns, ["id", "topic"]);

        let mut i = vec![b'I'];
        i.extend_from_slice(&16_384u32.to_be_bytes());
        i.push(b'N');
        i.extend_from_slice(&2u16.to_be_bytes());
        i.push(b't');
        i.extend_from_slice(&3u32.to_be_bytes());
        i.extend_from_slice(b"abc");
        i.push(b'n');
        assert_eq!(
            decode(&i).unwrap(),
            Change::Insert {
                relation: 16_384,
                values: vec![Some("abc".to_owned()), None],
            }
        );
    }

    #[test]
    fn refuses_truncated_messages() {
        assert!(decode(b"").is_err());
        assert!(decode(b"R\x00\x00").is_err());
        assert!(decode(b"I\x00\x00\x40\x00N\x00\x01t\x00\x00\x00\x09ab").is_err());
        assert!(decode(b"I\x00\x00\x40\x00K").is_err());
        assert_eq!(decode(b"U whatever").unwrap(), Change::Other);
    }
}
