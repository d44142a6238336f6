"""The data-lookup worker."""
