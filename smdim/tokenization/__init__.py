"""REMI tokenization: tokenizer from params, encode MIDI to one stream, decode to MIDI, token validity."""
