//! The one JSON line a scenario prints on stdout.
//!
//! Formatted by hand: the line is a flat object with one nested `params` object, which does not
//! need a serializer. Keys keep the order they are added in, so lines from different runs read
//! alike. Non-finite floats become `null`, as JSON has no NaN.

use std::fmt::Write;

#[derive(Debug, Default)]
pub(crate) struct JsonLine {
    buf: String,
}

impl JsonLine {
    pub(crate) fn new() -> Self {
        JsonLine::default()
    }

    fn key(&mut self, key: &str) {
        self.buf.push(if self.buf.is_empty() { '{' } else { ',' });
        escape_into(&mut self.buf, key);
        self.buf.push(':');
    }

    pub(crate) fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        escape_into(&mut self.buf, value);
        self
    }

    pub(crate) fn uint(&mut self, key: &str, value: u64) -> &mut Self {
        self.key(key);
        write!(self.buf, "{value}").expect("writing to a String cannot fail");
        self
    }

    /// `value` with `decimals` digits after the point.
    pub(crate) fn float(&mut self, key: &str, value: f64, decimals: usize) -> &mut Self {
        self.key(key);
        if value.is_finite() {
            write!(self.buf, "{value:.decimals$}").expect("writing to a String cannot fail");
        } else {
            self.buf.push_str("null");
        }
        self
    }

    pub(crate) fn opt_uint(&mut self, key: &str, value: Option<u64>) -> &mut Self {
        match value {
            Some(v) => self.uint(key, v),
            None => self.null(key),
        }
    }

    pub(crate) fn opt_float(
        &mut self,
        key: &str,
        value: Option<f64>,
        decimals: usize,
    ) -> &mut Self {
        match value {
            Some(v) => self.float(key, v, decimals),
            None => self.null(key),
        }
    }

    pub(crate) fn opt_str(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        match value {
            Some(v) => self.str(key, v),
            None => self.null(key),
        }
    }

    pub(crate) fn null(&mut self, key: &str) -> &mut Self {
        self.key(key);
        self.buf.push_str("null");
        self
    }

    pub(crate) fn object(&mut self, key: &str, value: JsonLine) -> &mut Self {
        self.key(key);
        self.buf.push_str(&value.finish());
        self
    }

    pub(crate) fn finish(mut self) -> String {
        if self.buf.is_empty() {
            self.buf.push('{');
        }
        self.buf.push('}');
        self.buf
    }
}

fn escape_into(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                write!(out, "\\u{:04x}", c as u32).expect("writing to a String cannot fail")
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_nested_object_and_escapes() {
        let mut params = JsonLine::new();
        params.uint("qos", 1).opt_float("rate", None, 0);
        let mut line = JsonLine::new();
        line.str("addr", "a\"b\\c\u{1}")
            .object("params", params)
            .float("loss", 0.25, 4)
            .float("bad", f64::NAN, 1)
            .opt_uint("n", Some(3));
        assert_eq!(
            line.finish(),
            r#"{"addr":"a\"b\\c\u0001","params":{"qos":1,"rate":null},"loss":0.2500,"bad":null,"n":3}"#
        );
        assert_eq!(JsonLine::new().finish(), "{}");
    }
}
