"""Build the two consumers in place: python setup.py build_ext --inplace (cbn importable)."""
from Cython.Build import cythonize
from setuptools import Extension, setup

import cbn

setup(
    name="cbn-consumers",
    ext_modules=[
        Extension("consumer_c", ["consumer_c.c"], include_dirs=[cbn.get_include()]),
        *cythonize([Extension("consumer_cy", ["consumer_cy.pyx"])],
                   compiler_directives={"language_level": 3}),
    ],
)
