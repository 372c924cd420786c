//! Turning driver errors into messages a person can act on.

/// A one-line description of a driver error: the server's message with its SQLSTATE,
/// detail, hint and context when it has them; the error chain otherwise.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(d) = db.detail() {
            s.push_str("; detail: ");
            s.push_str(d);
        }
        if let Some(h) = db.hint() {
            s.push_str("; hint: ");
            s.push_str(h);
        }
        if let Some(w) = db.where_() {
            s.push_str("; where: ");
            s.push_str(&w.replace('\n', " / "));
        }
        return s;
    }
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}
