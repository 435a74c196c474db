"""The base layer every stage stands on: settings and derived paths (``config``), the
process environment (``env``), feature names and the label rule (``features``), the
tf.Example encoding of rows (``examples``), MLMD access (``mlmd``), process ownership
(``owner``), and the command-line conventions shared by every sub-command (``command``).
It imports nothing above it."""
