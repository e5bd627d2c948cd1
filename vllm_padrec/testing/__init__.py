"""Shared by the tests and the benchmarks (not imported by the plugin).

hostile.py    requests a hostile client sends, with the 4xx each must get
"""
