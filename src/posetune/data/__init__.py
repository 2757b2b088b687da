"""Data: layouts, robust image loading, the decoded-image cache, the audit and the synthetic yoga renderer."""
