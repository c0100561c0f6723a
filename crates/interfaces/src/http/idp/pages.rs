//! The login pages: plain HTML forms, no JavaScript, labelled fields (WCAG 2.2: labels,
//! `autocomplete`, errors announced with `role="alert"` and tied to the field).

use ferrobank_adapters::idp::{LoginForm, LoginPage};

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:26rem;margin:3rem auto;padding:0 1rem;color:#1a1a1a}\
h1{font-size:1.5rem}label{display:block;margin-top:1rem;font-weight:600}\
input{width:100%;padding:.5rem;font-size:1rem;box-sizing:border-box;border:1px solid #555}\
button{margin-top:1.5rem;padding:.6rem 1.2rem;font-size:1rem;background:#0b4f8a;color:#fff;border:0}\
.error{color:#a00000;border-left:4px solid #a00000;padding:.5rem;background:#fff0f0}\
code{word-break:break-all;font-size:1.1rem}";

/// A whole page around `body`.
pub fn document(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><style>{STYLE}</style></head><body><main>{body}</main></body></html>",
        title = escape(title),
    )
}

/// The page of a login step.
pub fn login(page: &LoginPage) -> String {
    let action = format!(
        "/realms/{}/login-actions/authenticate?login={}",
        escape(&page.realm),
        escape(&page.login_id)
    );
    let error = page
        .error
        .as_deref()
        .map(|e| format!("<p class=\"error\" id=\"form-error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    let described = if page.error.is_some() { " aria-describedby=\"form-error\"" } else { "" };
    let (title, fields) = match &page.form {
        LoginForm::Credentials { username } => (
            "Sign in to ferrobank",
            format!(
                "<label for=\"username\">Username or email</label>\
                 <input id=\"username\" name=\"username\" type=\"text\" autocomplete=\"username\" \
                 required autofocus value=\"{}\"{described}>\
                 <label for=\"password\">Password</label>\
                 <input id=\"password\" name=\"password\" type=\"password\" \
                 autocomplete=\"current-password\" required{described}>\
                 <button type=\"submit\">Sign in</button>",
                escape(username.as_deref().unwrap_or(""))
            ),
        ),
        LoginForm::Otp => (
            "Two-step verification",
            format!(
                "<label for=\"otp\">Code from your authenticator app</label>\
                 <input id=\"otp\" name=\"otp\" type=\"text\" inputmode=\"numeric\" \
                 autocomplete=\"one-time-code\" pattern=\"[0-9]*\" required autofocus{described}>\
                 <button type=\"submit\">Verify</button>"
            ),
        ),
        LoginForm::ConfigureTotp { secret, uri } => (
            "Set up two-step verification",
            format!(
                "<p>Your role requires a second factor. Add this key to an authenticator app \
                 (type it in, or open the link on your phone):</p>\
                 <p><code id=\"totp-secret\">{}</code></p><p><a href=\"{}\">Open in authenticator app</a></p>\
                 <label for=\"otp\">Then enter the code it shows</label>\
                 <input id=\"otp\" name=\"otp\" type=\"text\" inputmode=\"numeric\" \
                 autocomplete=\"one-time-code\" pattern=\"[0-9]*\" required autofocus{described}>\
                 <button type=\"submit\">Verify and continue</button>",
                escape(secret),
                escape(uri)
            ),
        ),
        LoginForm::UpdatePassword => (
            "Choose a new password",
            format!(
                "<p>You need to change your password to continue.</p>\
                 <label for=\"password_new\">New password</label>\
                 <input id=\"password_new\" name=\"password_new\" type=\"password\" \
                 autocomplete=\"new-password\" required autofocus{described}>\
                 <label for=\"password_confirm\">Confirm new password</label>\
                 <input id=\"password_confirm\" name=\"password_confirm\" type=\"password\" \
                 autocomplete=\"new-password\" required>\
                 <button type=\"submit\">Change password</button>"
            ),
        ),
    };
    let body = format!(
        "<h1>{title}</h1>{error}<form method=\"post\" action=\"{action}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">{fields}</form>",
        escape(&page.csrf)
    );
    document(title, &body)
}

/// A page with a message and nothing to do.
pub fn message(title: &str, text: &str) -> String {
    document(title, &format!("<h1>{}</h1><p role=\"alert\">{}</p>", escape(title), escape(text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_user_supplied_is_escaped() {
        let page = LoginPage {
            realm: "banking".into(),
            login_id: "id\"><script>".into(),
            csrf: "c".into(),
            client_id: "app".into(),
            form: LoginForm::Credentials { username: Some("<img src=x onerror=alert(1)>".into()) },
            error: Some("<b>".into()),
        };
        let html = login(&page);
        assert!(!html.contains("<script>") && !html.contains("<img") && !html.contains("<b>"));
        assert!(html.contains("&lt;img src=x"));
        assert!(html.contains("for=\"username\"") && html.contains("role=\"alert\""));
    }
}
