"""The flashsale command."""
