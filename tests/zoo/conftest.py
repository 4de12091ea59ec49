import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # the zoo's tests import models.py, its model builders
