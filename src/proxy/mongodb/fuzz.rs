//! Entry points for the fuzz targets: the message decoder and the `db_query` rendering,
//! fed arbitrary bytes as a peer could send them.

use super::client::Request;
use super::render::{render_op_msg, render_op_query, Capture};
use super::wire::{decode_message, Header, OpMsg};

/// Decodes `data` as one message (the first 4 bytes choose the opcode) and renders it as
/// the relay would. Must never panic.
pub fn message(data: &[u8]) {
    let Some((op, body)) = data.split_first_chunk::<4>() else { return };
    let op_code = match op[0] % 4 {
        0 => super::wire::OP_MSG,
        1 => super::wire::OP_QUERY,
        2 => super::wire::OP_COMPRESSED,
        _ => i32::from_le_bytes(*op),
    };
    let header = Header { request_id: 1, response_to: 0, op_code };
    let Ok(msg) = decode_message(header, super::wire::frame(1, 0, op_code, body), 1 << 20) else { return };
    if let Ok(request) = Request::parse(&msg) {
        let _ = request.database();
        let _ = super::commands::summarize_reply(request.body());
        let _ = super::commands::redact(request.name(), request.body());
        let mut out = Capture::new(64 * 1024);
        match &request {
            Request::Msg(m) => render_op_msg(m, &m.body, &mut out),
            Request::Query { query, command } => render_op_query(query, command, &mut out),
        }
        let (text, cut) = out.finish("db_query");
        assert!(text.len() <= 64 * 1024);
        if cut.is_none() {
            assert!(
                serde_json::from_str::<serde_json::Value>(
                    text.trim_start_matches("OpMsg(Body=").split(", Documents=[").next().unwrap_or("{}")
                )
                .is_ok()
                    || !text.starts_with("OpMsg")
            );
        }
    }
    if let Ok(m) = OpMsg::parse(&header, body) {
        let _ = OpMsg::parse(&header, &m.encode());
    }
    if let Ok((_, doc)) = super::wire::op_msg_body_ref(&header, body) {
        let _ = super::commands::summarize_reply(doc);
    }
}
