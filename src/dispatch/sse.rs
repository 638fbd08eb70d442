//! Server-sent events from an upstream, parsed incrementally: each chunk is scanned once
//! (never the whole buffer again), lines may end in `\n`, `\r\n` or `\r` (even split across
//! chunks), only `data:` fields are kept, and one event may not grow past a bound, so a
//! provider that never ends an event cannot grow memory without limit.

/// The largest event accepted (a whole answer in one event fits many times over).
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// One event's meaning for the relay.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A JSON chunk.
    Chunk(serde_json::Value),
    /// `data: [DONE]`.
    Done,
    /// A JSON object with an `error` and no `choices`: the provider failed in-band.
    Error(serde_json::Value),
    /// Not JSON: skipped by the relay (kept for its log line).
    Malformed(String),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("an event grew past {MAX_EVENT_BYTES} bytes without ending")]
pub struct TooLarge;

#[derive(Debug, Default)]
pub struct Parser {
    /// The current line, without its terminator.
    line: Vec<u8>,
    /// The current event's data lines, joined by `\n`; `None` until one arrives.
    data: Option<Vec<u8>>,
    /// The last byte seen was `\r`: a following `\n` belongs to the same line end.
    after_cr: bool,
    max_event: usize,
}

impl Parser {
    pub fn new() -> Parser {
        Parser {
            max_event: MAX_EVENT_BYTES,
            ..Parser::default()
        }
    }

    #[cfg(test)]
    fn with_limit(max_event: usize) -> Parser {
        Parser {
            max_event,
            ..Parser::default()
        }
    }

    /// Feeds a chunk; complete events are appended to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<Event>) -> Result<(), TooLarge> {
        let mut rest = chunk;
        if self.after_cr {
            self.after_cr = false;
            if let Some(b'\n') = rest.first() {
                rest = &rest[1..];
            }
        }
        while let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.line.extend_from_slice(&rest[..end]);
            self.check_size()?;
            let terminator = rest[end];
            rest = &rest[end + 1..];
            if terminator == b'\r' {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            self.end_line(out);
        }
        self.line.extend_from_slice(rest);
        self.check_size()
    }

    fn check_size(&self) -> Result<(), TooLarge> {
        let pending = self.line.len() + self.data.as_ref().map_or(0, Vec::len);
        if pending > self.max_event {
            return Err(TooLarge);
        }
        Ok(())
    }

    fn end_line(&mut self, out: &mut Vec<Event>) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            if let Some(data) = self.data.take() {
                out.push(classify(&data));
            }
            return;
        }
        // Comments (`:`) and other fields (`event:`, `id:`, `retry:`) carry no answer.
        let Some(value) = line.strip_prefix(b"data") else {
            return;
        };
        let value = match value {
            [] => &[][..],
            [b':', b' ', rest @ ..] => rest,
            [b':', rest @ ..] => rest,
            _ => return,
        };
        match &mut self.data {
            Some(data) => {
                data.push(b'\n');
                data.extend_from_slice(value);
            }
            None => self.data = Some(value.to_vec()),
        }
    }
}

fn classify(data: &[u8]) -> Event {
    let trimmed = data.trim_ascii();
    if trimmed == b"[DONE]" {
        return Event::Done;
    }
    match serde_json::from_slice::<serde_json::Value>(trimmed) {
        Ok(json)
            if json.get("error").is_some_and(|e| !e.is_null()) && json.get("choices").is_none() =>
        {
            Event::Error(json)
        }
        Ok(json) => Event::Chunk(json),
        Err(_) => Event::Malformed(String::from_utf8_lossy(data).into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_in_pieces(input: &[u8], piece: usize) -> Vec<Event> {
        let mut parser = Parser::new();
        let mut out = Vec::new();
        for chunk in input.chunks(piece) {
            parser
                .push(chunk, &mut out)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        out
    }

    #[test]
    fn events_are_parsed_whatever_the_line_ends_and_chunk_boundaries() {
        let input = b"data: {\"a\":1}\r\n\r\n: keep-alive\n\nevent: x\rdata: not json\r\rdata: {\"b\":\r\ndata: 2}\n\ndata: [DONE]\n\n";
        let expected = vec![
            Event::Chunk(json!({"a": 1})),
            Event::Malformed("not json".into()),
            Event::Chunk(json!({"b": 2})),
            Event::Done,
        ];
        for piece in [1, 2, 3, 7, input.len()] {
            assert_eq!(parse_in_pieces(input, piece), expected, "pieces of {piece}");
        }
    }

    #[test]
    fn carriage_returns_inside_data_are_kept() {
        // A `\r` inside a JSON string is escaped; a raw one ends the line, as the spec says.
        let events = parse_in_pieces(b"data: {\"t\": \"a\\r\\nb\"}\n\n", 4);
        assert_eq!(events, [Event::Chunk(json!({"t": "a\r\nb"}))]);
    }

    #[test]
    fn an_error_object_is_an_in_band_failure() {
        let events = parse_in_pieces(b"data: {\"error\": {\"message\": \"overloaded\"}}\n\n", 5);
        assert!(matches!(&events[..], [Event::Error(e)] if e["error"]["message"] == "overloaded"));
    }

    #[test]
    fn an_incomplete_event_waits_and_an_endless_one_is_refused() {
        let mut parser = Parser::with_limit(64);
        let mut out = Vec::new();
        assert!(parser.push(b"data: {\"a\":", &mut out).is_ok());
        assert!(out.is_empty());
        assert!(parser.push(&[b'x'; 100], &mut out).is_err());
        let mut parser = Parser::with_limit(64);
        let many_lines: Vec<u8> = b"data: x\n".repeat(40);
        assert!(
            parser.push(&many_lines, &mut out).is_err(),
            "data lines count too"
        );
    }
}
