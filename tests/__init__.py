"""The tests of a module (fcn8s/<module>.py, or main.py, helper.py, benchmark.py) are in test_<module>.py."""
