// Registration rules: the same as the server's (chatsrv/services/auth.py: USERNAME, EMAIL,
// MIN_PASSWORD, MAX_PASSWORD and the display_name check). tests/browser/test_rules.py reads
// this file and fails when the two disagree, and runs sample inputs through both.
// When the OpenAPI document carries these constraints, read them from there instead.

export const USERNAME = /^[A-Za-z0-9_.-]{3,32}$/;
export const EMAIL = /^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$/;
export const EMAIL_MAX = 254;
export const PASSWORD_MIN_BYTES = 8;
export const PASSWORD_MAX_BYTES = 72; // bcrypt counts bytes (UTF-8), not characters
export const DISPLAY_NAME_MAX = 64; // characters (code points)

const utf8Length = (s) => new TextEncoder().encode(s).length;

// The first rule a registration breaks, as {field, message}, or null. Trims like the server.
export function checkRegistration({ username = '', email = '', password = '', display_name = '' }) {
  const user = username.trim();
  if (!USERNAME.test(user)) {
    return { field: 'username', message: "Username: 3–32 letters, digits, '_', '.' or '-'." };
  }
  const mail = email.trim();
  if (!EMAIL.test(mail) || mail.length > EMAIL_MAX) {
    return { field: 'email', message: 'Email: enter an address like name@example.com.' };
  }
  const size = utf8Length(password);
  if (size < PASSWORD_MIN_BYTES || size > PASSWORD_MAX_BYTES) {
    return { field: 'password', message: `Password: ${PASSWORD_MIN_BYTES} to ${PASSWORD_MAX_BYTES} bytes `
      + `(now ${size}; letters outside ASCII count 2–4).` };
  }
  const display = (display_name || user).trim(); // as the server: an absent name is the username
  const chars = [...display].length;
  if (chars < 1 || chars > DISPLAY_NAME_MAX) {
    return { field: 'display_name', message: `Display name: 1 to ${DISPLAY_NAME_MAX} characters.` };
  }
  return null;
}
