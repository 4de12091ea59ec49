import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # the sweep's tests import opinfo_sweep.py
