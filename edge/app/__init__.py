"""The device app, `edge-classify`, built on the device library (edge): options and parser, the run, batch
and watch, the watcher with its journal, the result rows and sinks, the per-sample summary, frame input.

Modules (one job each): cli (entry point, exit codes), options, parser, run, inputs, places, loading, batch,
watch, watcher, listing, events, identity, journal, handling, rows, sinks, summary, frames, signals, errors,
console. Nothing is imported here: a single-image start loads only what it uses.
"""
