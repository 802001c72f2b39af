"""The browser pages' files (HTML, CSS, JavaScript), served by gateway/pages.py."""
