"""Write plain_protocol<N>.pkl: one value of plain types pickled with each protocol 0 to 5.

pickle_test.cc reads these files and checks every value. Run with any Python 3.8+:
    python3 make_plain_pickles.py
"""
import collections
import pickle

VALUE = {
    "a": 1,
    "b": [1.5, None, True, False],
    "c": ("h\u00e9\u20ac", "line\\u0041"),
    "big": 2**70,
    "neg": -5,
    "i32": -70000,
    "i64": 2**40,
    -1: "x",
    "od": collections.OrderedDict([("k", 2), ("j", 3)]),
}

for protocol in range(6):
    with open(f"plain_protocol{protocol}.pkl", "wb") as f:
        pickle.dump(VALUE, f, protocol=protocol)
