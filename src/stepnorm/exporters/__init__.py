"""Exporters from the stats artifact to the formats training code loads."""
