//! Just enough MessagePack to write bus messages the way PHP, Python and msgpack-lite do and to
//! read the ones Pigeon publishes. `Str` and `Bin` hold raw bytes: a str need not be UTF-8.

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Nil,
    Bool(bool),
    Int(i64),
    F64(f64),
    Str(Vec<u8>),
    Bin(Vec<u8>),
    Array(Vec<Value>),
    Map(Vec<(Value, Value)>),
}

pub fn str(s: &str) -> Value {
    Value::Str(s.as_bytes().to_vec())
}

/// A map with str keys, in the order given (msgpack-lite and PHP keep insertion order).
pub fn map(pairs: Vec<(&str, Value)>) -> Value {
    Value::Map(pairs.into_iter().map(|(k, v)| (str(k), v)).collect())
}

impl Value {
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(pairs) => pairs
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == key.as_bytes()))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::F64(f) if f.fract() == 0.0 => Some(*f as i64),
            _ => None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        encode(self, &mut out);
        out
    }
}

fn len_header(out: &mut Vec<u8>, len: usize, fix: Option<(u8, usize)>, c8: Option<u8>, c16: u8) {
    match (fix, c8) {
        (Some((base, max)), _) if len <= max => out.push(base | len as u8),
        (_, Some(code)) if len <= 0xff => out.extend([code, len as u8]),
        _ if len <= 0xffff => {
            out.push(c16);
            out.extend((len as u16).to_be_bytes());
        }
        _ => {
            out.push(c16 + 1);
            out.extend((len as u32).to_be_bytes());
        }
    }
}

/// Smallest forms, as PHP's msgpack extension writes them (str8 included).
pub fn encode(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Nil => out.push(0xc0),
        Value::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
        Value::Int(i) => {
            let i = *i;
            if (0..=0x7f).contains(&i) || (-32..0).contains(&i) {
                out.push(i as u8);
            } else if (0..=0xff).contains(&i) {
                out.extend([0xcc, i as u8]);
            } else if (0..=0xffff).contains(&i) {
                out.push(0xcd);
                out.extend((i as u16).to_be_bytes());
            } else if (0..=0xffff_ffff).contains(&i) {
                out.push(0xce);
                out.extend((i as u32).to_be_bytes());
            } else if i >= 0 {
                out.push(0xcf);
                out.extend((i as u64).to_be_bytes());
            } else if i >= -128 {
                out.extend([0xd0, i as u8]);
            } else if i >= -32768 {
                out.push(0xd1);
                out.extend((i as i16).to_be_bytes());
            } else if i >= i32::MIN as i64 {
                out.push(0xd2);
                out.extend((i as i32).to_be_bytes());
            } else {
                out.push(0xd3);
                out.extend(i.to_be_bytes());
            }
        }
        Value::F64(f) => {
            out.push(0xcb);
            out.extend(f.to_be_bytes());
        }
        Value::Str(s) => {
            len_header(out, s.len(), Some((0xa0, 31)), Some(0xd9), 0xda);
            out.extend(s);
        }
        Value::Bin(b) => {
            len_header(out, b.len(), None, Some(0xc4), 0xc5);
            out.extend(b);
        }
        Value::Array(items) => {
            len_header(out, items.len(), Some((0x90, 15)), None, 0xdc);
            for item in items {
                encode(item, out);
            }
        }
        Value::Map(pairs) => {
            len_header(out, pairs.len(), Some((0x80, 15)), None, 0xde);
            for (k, v) in pairs {
                encode(k, out);
                encode(v, out);
            }
        }
    }
}

/// One value from the front of `buf` and the bytes it took; `None` if `buf` is not msgpack.
pub fn decode(buf: &[u8]) -> Option<(Value, usize)> {
    let mut pos = 0;
    let v = decode_at(buf, &mut pos, 0)?;
    Some((v, pos))
}

fn take<'a>(buf: &'a [u8], pos: &mut usize, n: usize) -> Option<&'a [u8]> {
    let s = buf.get(*pos..*pos + n)?;
    *pos += n;
    Some(s)
}

fn be(buf: &[u8], pos: &mut usize, n: usize) -> Option<u64> {
    Some(
        take(buf, pos, n)?
            .iter()
            .fold(0u64, |acc, b| acc << 8 | u64::from(*b)),
    )
}

fn decode_at(buf: &[u8], pos: &mut usize, depth: usize) -> Option<Value> {
    if depth > 64 {
        return None;
    }
    let b = *take(buf, pos, 1)?.first()?;
    let bytes = |pos: &mut usize, n: usize| take(buf, pos, n).map(<[u8]>::to_vec);
    let items = |pos: &mut usize, n: usize| -> Option<Vec<Value>> {
        (0..n).map(|_| decode_at(buf, pos, depth + 1)).collect()
    };
    let pairs = |pos: &mut usize, n: usize| -> Option<Vec<(Value, Value)>> {
        (0..n)
            .map(|_| {
                Some((
                    decode_at(buf, pos, depth + 1)?,
                    decode_at(buf, pos, depth + 1)?,
                ))
            })
            .collect()
    };
    Some(match b {
        0x00..=0x7f => Value::Int(i64::from(b)),
        0x80..=0x8f => Value::Map(pairs(pos, usize::from(b & 0x0f))?),
        0x90..=0x9f => Value::Array(items(pos, usize::from(b & 0x0f))?),
        0xa0..=0xbf => Value::Str(bytes(pos, usize::from(b & 0x1f))?),
        0xc0 => Value::Nil,
        0xc2 => Value::Bool(false),
        0xc3 => Value::Bool(true),
        0xc4..=0xc6 => {
            let n = be(buf, pos, 1 << (b - 0xc4))? as usize;
            Value::Bin(bytes(pos, n)?)
        }
        0xca => Value::F64(f64::from(f32::from_bits(be(buf, pos, 4)? as u32))),
        0xcb => Value::F64(f64::from_bits(be(buf, pos, 8)?)),
        0xcc..=0xcf => Value::Int(be(buf, pos, 1 << (b - 0xcc))? as i64),
        0xd0 => Value::Int(i64::from(be(buf, pos, 1)? as u8 as i8)),
        0xd1 => Value::Int(i64::from(be(buf, pos, 2)? as u16 as i16)),
        0xd2 => Value::Int(i64::from(be(buf, pos, 4)? as u32 as i32)),
        0xd3 => Value::Int(be(buf, pos, 8)? as i64),
        0xd9..=0xdb => {
            let n = be(buf, pos, 1 << (b - 0xd9))? as usize;
            Value::Str(bytes(pos, n)?)
        }
        0xdc | 0xdd => {
            let n = be(buf, pos, 2 << (b - 0xdc))? as usize;
            Value::Array(items(pos, n)?)
        }
        0xde | 0xdf => {
            let n = be(buf, pos, 2 << (b - 0xde))? as usize;
            Value::Map(pairs(pos, n)?)
        }
        0xe0..=0xff => Value::Int(i64::from(b as i8)),
        _ => return None,
    })
}
