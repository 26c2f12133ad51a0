"""The items service: a catalogue of priced items."""
