# Stand-in for Slicer's extension description and CPack files: the install test packages nothing.
