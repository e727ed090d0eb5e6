"""The package version, in a module of its own so that setup.cfg and the
modules that record it (the export metadata) read it without importing the
package root."""

__version__ = "0.1.0"
