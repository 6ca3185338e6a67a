"""Repository tools (demo, broker launcher): not part of the installed packages."""
