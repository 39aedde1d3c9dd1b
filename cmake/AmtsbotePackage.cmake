# AmtsbotePackage.cmake - installs the CMake package config (lib/cmake/amtsbote): the imported
# target amtsbote::amtsbote and amtsbote_generate(), relocatable with the install prefix.
include(CMakePackageConfigHelpers)
set(AB_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/amtsbote)
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/amtsboteConfig.cmake.in
  ${PROJECT_BINARY_DIR}/amtsboteConfig.cmake
  INSTALL_DESTINATION ${AB_CMAKE_DIR}
  PATH_VARS CMAKE_INSTALL_INCLUDEDIR CMAKE_INSTALL_LIBDIR CMAKE_INSTALL_BINDIR)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/amtsboteConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMajorVersion)
install(FILES ${PROJECT_BINARY_DIR}/amtsboteConfig.cmake
  ${PROJECT_BINARY_DIR}/amtsboteConfigVersion.cmake
  ${PROJECT_SOURCE_DIR}/cmake/AmtsboteGenerate.cmake
  DESTINATION ${AB_CMAKE_DIR})
