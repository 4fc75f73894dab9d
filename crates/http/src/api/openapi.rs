//! The OpenAPI 3.1 document served at `/openapi.json`. Written by hand next to the handlers; a
//! test checks that every route the router serves is described here. The bounds it states (k,
//! batch size, field lengths, hashtags) are the running service's own limits.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::AppState;
use notellm_service::ServiceLimits;

fn err(description: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } })
}

fn ok(description: &str, schema: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } })
}

fn body(schema: &str) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } })
}

/// "Holds a character that is not whitespace": the complement of what Rust's `str::trim`
/// removes (Unicode `White_Space`), spelled out because the regex dialects of JSON Schema and of
/// its tools each define `\s` a little differently.
const NOT_BLANK: &str = "[^\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028-\\u2029\\u202f\\u205f\\u3000]";

/// A note's fields, bounded as `l.note` says.
fn note_properties(l: &ServiceLimits) -> Value {
    let n = &l.note;
    json!({
        "title": { "type": "string", "maxLength": n.max_title_chars },
        "content": { "type": "string", "maxLength": n.max_content_chars },
        "hashtags": { "type": "array", "maxItems": n.max_hashtags,
            "items": { "type": "string", "minLength": 1, "maxLength": n.max_hashtag_chars, "pattern": NOT_BLANK,
                "description": "not blank" } },
        "category": { "type": ["string", "null"], "minLength": 1, "maxLength": n.max_hashtag_chars, "pattern": NOT_BLANK,
            "description": "not blank; null or absent: none" }
    })
}

/// A stored note's fields and its optional image.
fn note_body_properties(l: &ServiceLimits) -> Value {
    let mut props = note_properties(l);
    props["image"] = json!({ "type": ["string", "null"], "contentEncoding": "base64",
        "description": format!("the note's image, a PNG, JPEG or WebP file in standard base64 (at most {} bytes \
            decoded, {} px on a side; 413 image_too_large above, 422 invalid_image when it is not such a file). \
            Needs a multimodal checkpoint; counts toward the body limit", l.image.max_bytes, l.image.max_side) });
    props
}

/// "The title or the content is not blank" (what a note needs to be embedded).
fn some_text() -> Value {
    json!([
        { "required": ["title"], "properties": { "title": { "pattern": NOT_BLANK } } },
        { "required": ["content"], "properties": { "content": { "pattern": NOT_BLANK } } }
    ])
}

/// The document for a service with limits `l` whose `/related` answers `default_k` notes when
/// the query does not say.
pub fn document(l: &ServiceLimits, default_k: usize) -> Value {
    let mut doc = paths_and_schemas(l, default_k);
    add_transport_statuses(&mut doc);
    doc
}

/// Adds to every operation the answers of the layers around the handlers (the request limits,
/// authentication, load shedding and the request timeout), where the operation does not state
/// its own: every operation can be refused for its URI (414) or headers (431), fail inside
/// (500), be shed (503) or time out (504);
/// one with a body for malformed JSON (400), a slow body (408), its size (413) or its type
/// (415); one with a query for a query that does not parse (400); one with `security` for its
/// key (401).
fn add_transport_statuses(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else { return };
    for op in paths.values_mut().filter_map(Value::as_object_mut).flat_map(|p| p.values_mut()) {
        let has_body = op.get("requestBody").is_some();
        let secured = op.get("security").is_some();
        let has_query =
            op.get("parameters").and_then(Value::as_array).is_some_and(|ps| ps.iter().any(|p| p["in"] == "query"));
        let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else { continue };
        let mut add = |status: &str, description: &str| {
            responses.entry(status).or_insert_with(|| err(description));
        };
        add("414", "URI over 8 KiB");
        add("431", "request header block too large");
        add("500", "an internal fault (logged; not retryable)");
        add("503", "too many requests in flight (Retry-After)");
        add("504", "over the request timeout");
        if has_body {
            add("400", "malformed JSON");
            add("408", "the body did not arrive within the body read timeout");
            add("413", "body over the size limit");
            add("415", "not application/json");
        }
        if has_query {
            add("400", "a query that does not parse (a k that is not an integer)");
        }
        if secured {
            add("401", "missing or wrong API key");
        }
    }
}

fn paths_and_schemas(l: &ServiceLimits, default_k: usize) -> Value {
    let k = json!({ "type": "integer", "minimum": 1, "maximum": l.max_k });
    let mut k_query = k.clone();
    k_query["default"] = json!(default_k);
    let draft_props = {
        let mut p = note_properties(l);
        p["k"] = k.clone();
        p["k"]["type"] = json!(["integer", "null"]);
        p
    };
    let suggest_props = {
        let p = note_properties(l);
        json!({ "title": p["title"], "content": p["content"],
            "max_hashtags": { "type": ["integer", "null"], "minimum": 1, "maximum": l.max_suggest_hashtags } })
    };
    let id = json!({ "name": "note_id", "in": "path", "required": true,
        "schema": { "type": "string", "pattern": "^(?!\\.{1,2}$)[A-Za-z0-9._:-]{1,128}$",
            "description": "not `.` or `..` (path segments that clients normalise away)" } });
    let auth = json!([{ "bearer": [] }]);
    json!({
        "openapi": "3.1.0",
        "info": { "title": "notellm", "version": env!("CARGO_PKG_VERSION"),
            "description": "NoteLLM related-note recommendation: notes are embedded at [EMB], related notes are nearest neighbours; hashtags and a category are generated by the same model." },
        "paths": {
            "/notes/{note_id}": {
                "put": { "summary": "Embed, store and index a note (an unchanged re-PUT is a no-op)", "security": auth, "parameters": [id],
                    "requestBody": body("NoteBody"),
                    "responses": { "201": ok("created", "PutOutcome"), "200": ok("updated or unchanged", "PutOutcome"),
                        "400": err("malformed JSON"), "401": err("missing or wrong API key"),
                        "413": err("body too large, or the image over its byte or pixel limit (image_too_large)"),
                        "415": err("not application/json"),
                        "422": err("invalid fields or note id, an image that is not PNG, JPEG or WebP (invalid_image), or an image for a text-only checkpoint"),
                        "503": err("queue full, not ready or store unreachable (Retry-After)"),
                        "507": err("the store is out of space (Retry-After)") } },
                "get": { "summary": "A stored note", "parameters": [id],
                    "responses": { "200": ok("the note", "StoredNote"), "404": err("unknown note"), "422": err("bad note id"),
                        "503": err("store unreachable (Retry-After)") } },
                "delete": { "summary": "Delete a note; it leaves every later /related answer at once", "security": auth, "parameters": [id],
                    "responses": { "204": { "description": "deleted" }, "401": err("missing or wrong API key"), "404": err("unknown note"),
                        "422": err("bad note id"), "503": err("not ready or store unreachable (Retry-After)") } }
            },
            "/notes:batch": {
                "post": { "summary": "Up to the configured number of notes, with per-note results", "security": auth,
                    "requestBody": body("BatchBody"),
                    "responses": { "200": ok("per-note results in input order", "BatchResults"), "400": err("malformed JSON"),
                        "401": err("missing or wrong API key"), "413": err("body too large"), "415": err("not application/json"),
                        "422": err("empty or oversized batch"), "503": err("queue full, not ready or store unreachable (Retry-After)"),
                        "507": err("the store is out of space (Retry-After)") } }
            },
            "/related/{note_id}": {
                "get": { "summary": "Top-k related notes of a stored note (never itself or a deleted note)",
                    "parameters": [id, { "name": "k", "in": "query", "required": false, "schema": k_query }],
                    "responses": { "200": ok("related notes", "Related"), "404": err("unknown note"), "409": err("note embedded by another model version"),
                        "422": err("k out of range or bad note id"), "503": err("not ready") } }
            },
            "/related": {
                "post": { "summary": "Related notes for an unsaved draft (cold start); nothing is stored",
                    "requestBody": body("DraftBody"),
                    "responses": { "200": ok("related notes", "Related"), "422": err("invalid fields"), "503": err("queue full") } }
            },
            "/suggest-tags": {
                "post": { "summary": "Hashtags and a category for a draft: the vote of its nearest indexed notes, or generated by the LLM (the answer's source says which)",
                    "requestBody": body("SuggestBody"),
                    "responses": { "200": ok("suggestion", "Suggestion"), "422": err("invalid fields"), "429": err("generation queue full (Retry-After)"),
                        "503": err("embedding queue full or store unavailable (Retry-After)") } }
            },
            "/healthz": { "get": { "summary": "Liveness", "responses": { "200": { "description": "alive" } } } },
            "/readyz": { "get": { "summary": "Readiness: model loaded, index restored, store reachable",
                "responses": { "200": { "description": "ready" }, "503": err("not ready") } } },
            "/metrics": { "get": { "summary": "Prometheus metrics", "responses": { "200": { "description": "text exposition format" } } } },
            "/openapi.json": { "get": { "summary": "This document", "responses": { "200": { "description": "OpenAPI 3.1" } } } },
            "/admin/reindex": {
                "post": { "summary": "Re-embed every stored note with a new checkpoint into a new index while the current model serves, then switch atomically",
                    "security": auth, "requestBody": body("ReindexBody"),
                    "responses": { "202": ok("started; follow it with GET", "ReindexStatus"), "401": err("missing or wrong API key"),
                        "409": err("a re-index is running, or the checkpoint is the serving model"),
                        "422": err("the checkpoint is missing or invalid, or batch_notes out of range"), "503": err("not ready") } },
                "get": { "summary": "The running re-index, else the last one since the process started", "security": auth,
                    "responses": { "200": ok("status", "ReindexStatus"), "401": err("missing or wrong API key"), "404": err("none has run") } },
                "delete": { "summary": "Cancel the running re-index before its switch; what it staged is reused by the next one", "security": auth,
                    "responses": { "202": ok("cancelling", "ReindexStatus"), "401": err("missing or wrong API key"), "404": err("none running") } }
            }
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "description": "NOTELLM_API_KEY; required on writes and /admin when set" } },
            "schemas": {
                "NoteBody": { "type": "object", "additionalProperties": false, "properties": note_body_properties(l),
                    "anyOf": some_text(), "description": "the title or the content must not be blank" },
                "BatchBody": { "type": "object", "required": ["notes"], "properties": { "notes": { "type": "array",
                    "minItems": 1, "maxItems": l.max_notes_per_batch,
                    "items": { "description": "an object of a note_id and NoteBody's fields. Each entry is checked on its own: one that is not such an object, or breaks NoteBody's rules, gets its own error in the results while the others are written, so any JSON value is accepted here" } } } },
                "DraftBody": { "type": "object", "additionalProperties": false, "properties": draft_props,
                    "anyOf": some_text(), "description": "the title or the content must not be blank" },
                "SuggestBody": { "type": "object", "additionalProperties": false, "properties": suggest_props,
                    "anyOf": some_text(), "description": "the title or the content must not be blank" },
                "PutOutcome": { "type": "object", "properties": { "note_id": { "type": "string" },
                    "status": { "enum": ["created", "updated", "unchanged"] }, "seq": { "type": "integer" }, "model_version": { "type": "string" } } },
                "BatchResults": { "type": "object", "properties": { "results": { "type": "array", "items": { "oneOf": [
                    { "$ref": "#/components/schemas/PutOutcome" },
                    { "type": "object", "properties": { "note_id": { "type": ["string", "null"], "description": "null when the entry had no string note_id" }, "status": { "const": "error" }, "error": { "$ref": "#/components/schemas/ErrorBody", "description": "invalid_note_id, duplicate_note_id (an id repeated in one batch: only its first entry is written), invalid_request, ..." } } } ] } } } },
                "StoredNote": { "type": "object", "properties": { "note_id": { "type": "string" }, "title": { "type": "string" },
                    "content": { "type": "string" }, "hashtags": { "type": "array", "items": { "type": "string" } },
                    "category": { "type": ["string", "null"] }, "model_version": { "type": "string" },
                    "image_sha256": { "type": "string", "description": "SHA-256 of the note's image; absent when it has none" },
                    "seq": { "type": "integer" }, "updated_at_unix": { "type": "integer" } } },
                "Related": { "type": "object", "properties": { "note_id": { "type": "string" }, "model_version": { "type": "string" },
                    "related": { "type": "array", "items": { "type": "object", "properties": {
                        "note_id": { "type": "string" }, "score": { "type": "number", "description": "cosine similarity" } } } } } },
                "Suggestion": { "type": "object", "required": ["hashtags", "category", "source"], "properties": {
                    "hashtags": { "type": "array", "items": { "type": "string" } },
                    "category": { "type": ["string", "null"] },
                    "source": { "enum": ["neighbours", "generated"],
                        "description": "neighbours: the vote of the nearest indexed notes; generated: the LLM's generation" } } },
                "ReindexBody": { "type": "object", "additionalProperties": false, "required": ["model"], "properties": {
                    "model": { "type": "string", "description": "checkpoint directory on the server" },
                    "batch_notes": { "type": "integer", "minimum": 1, "maximum": 1024, "default": 8,
                        "description": "notes per background chunk; a live write waits for at most one chunk" } } },
                "ReindexStatus": { "type": "object", "properties": {
                    "job_id": { "type": "string" },
                    "state": { "enum": ["loading", "embedding", "catching_up", "switching", "done", "failed", "cancelled"] },
                    "model_dir": { "type": "string" }, "from_version": { "type": "string" }, "to_version": { "type": "string" },
                    "batch_notes": { "type": "integer" }, "notes_total": { "type": "integer" }, "notes_done": { "type": "integer" },
                    "notes_reused": { "type": "integer" }, "changes_applied": { "type": "integer" },
                    "write_hold_secs": { "type": ["number", "null"] }, "started_at_unix": { "type": "integer" },
                    "elapsed_secs": { "type": "number" }, "error": { "type": ["string", "null"] } } },
                "ErrorBody": { "type": "object", "properties": { "code": { "type": "string" }, "message": { "type": "string" } } },
                "Error": { "type": "object", "properties": { "error": { "$ref": "#/components/schemas/ErrorBody" } } }
            }
        }
    })
}

pub async fn openapi(State(s): State<AppState>) -> Json<Value> {
    Json(document(&s.app.limits, s.http.default_k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_states_the_configured_limits() {
        let mut l = ServiceLimits { max_k: 50, max_notes_per_batch: 8, ..Default::default() };
        l.note.max_title_chars = 300;
        let doc = document(&l, 7);
        let k = &doc["paths"]["/related/{note_id}"]["get"]["parameters"][1]["schema"];
        assert_eq!((k["minimum"].as_u64(), k["maximum"].as_u64(), k["default"].as_u64()), (Some(1), Some(50), Some(7)));
        let s = &doc["components"]["schemas"];
        assert_eq!(s["BatchBody"]["properties"]["notes"]["maxItems"], 8);
        assert_eq!(s["BatchBody"]["properties"]["notes"]["minItems"], 1);
        assert_eq!(s["NoteBody"]["properties"]["title"]["maxLength"], 300);
        assert_eq!(s["DraftBody"]["properties"]["k"]["maximum"], 50);
        assert_eq!(s["SuggestBody"]["properties"]["max_hashtags"]["maximum"], 10);
    }

    #[test]
    fn every_operation_states_the_transport_answers() {
        let doc = document(&ServiceLimits::default(), 20);
        let mut ops = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let r = &op["responses"];
                for status in ["414", "431", "500", "503", "504"] {
                    assert!(r.get(status).is_some(), "{method} {path}: no {status}");
                }
                if op.get("requestBody").is_some() {
                    for status in ["400", "408", "413", "415", "422"] {
                        assert!(r.get(status).is_some(), "{method} {path}: no {status}");
                    }
                }
                ops += 1;
            }
        }
        assert_eq!(ops, 14);
        // An operation's own description is kept.
        assert_eq!(doc["paths"]["/notes:batch"]["post"]["responses"]["422"]["description"], "empty or oversized batch");
    }

    #[test]
    fn not_blank_is_the_complement_of_what_trim_removes() {
        let ws: Vec<u32> =
            (0..=0x10_FFFF).filter_map(char::from_u32).filter(|c| c.is_whitespace()).map(u32::from).collect();
        let esc = |c: u32| match c {
            0x09 => "\\t".to_owned(),
            0x0d => "\\r".to_owned(),
            0x20 => " ".to_owned(),
            c => format!("\\u{c:04x}"),
        };
        let mut class = String::new();
        let mut i = 0;
        while i < ws.len() {
            let start = ws[i];
            while i + 1 < ws.len() && ws[i + 1] == ws[i] + 1 {
                i += 1;
            }
            class += &if ws[i] == start { esc(start) } else { format!("{}-{}", esc(start), esc(ws[i])) };
            i += 1;
        }
        assert_eq!(NOT_BLANK, format!("[^{class}]"));
    }

    #[test]
    fn every_route_is_documented() {
        let doc = super::document(&ServiceLimits::default(), 20);
        let src = include_str!("mod.rs");
        let mut n = 0;
        for line in src.lines().filter(|l| l.trim_start().starts_with(".route(\"")) {
            let path = line.split('"').nth(1).expect("route path");
            assert!(doc["paths"].get(path).is_some(), "{path} is served but not in /openapi.json");
            n += 1;
        }
        assert_eq!(n, doc["paths"].as_object().map_or(0, |p| p.len()));
    }
}
