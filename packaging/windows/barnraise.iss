; ============================================================================================
; NOT BUILT OR TESTED: this recipe has never been compiled or run (the project's CI is Linux).
; Treat it as a starting point that a Windows maintainer must build, install, and check.
; ============================================================================================
;
; Inno Setup 6 script for the Barnraise contributor app on Windows.
;
; Build on Windows, from the repository root:
;   .venv\Scripts\python -m PyInstaller --noconfirm --clean packaging\barnraise.spec
;   "C:\Program Files (x86)\Inno Setup 6\ISCC.exe" /DAppVersion=0.1.0 packaging\windows\barnraise.iss
; Output: dist\barnraise-0.1.0-windows-x64-setup.exe
;
; What it does: installs the PyInstaller one-folder bundle (dist\barnraise\) per user (no
; admin rights; {autopf} is %LOCALAPPDATA%\Programs then), adds a Start menu entry, registers
; the barnraise: URL protocol under HKCU\Software\Classes\barnraise (so invite links open the
; Join dialog), and optionally starts Barnraise at login through the HKCU Run key, the same
; value the app's own Preferences > "Start at login" writes (app/tray/autostart.py).
;
; Needs packaging\windows\barnraise.ico (not in the repository yet: render it from
; assets\icons\barnraise-{16,24,32,48,64,256}.png, e.g. with ImageMagick
; `magick assets/icons/barnraise-*.png packaging/windows/barnraise.ico`).
;
; Open questions for whoever builds it first:
; - The bundle is a console executable (console=True in the spec) so `barnraise --headless`
;   prints; started from the Start menu it would flash a console window. Either build a
;   second, windowed EXE in the spec for the tray, or start the tray with `--minimized`
;   through a small launcher.
; - The URL handler passes the link as "%1": app/cli.py must accept a bare barnraise:// URL
;   as its argument (see docs/packaging.md, "Invite links").

#ifndef AppVersion
  #define AppVersion "0.1.0"
#endif
#define AppName "Barnraise"
#define AppExe "barnraise.exe"
#define AppId "org.barnraise.Barnraise"

[Setup]
AppId={{6C0E3A52-5B8B-4F5E-9E43-2F1B8A4D7C11}
AppName={#AppName}
AppVersion={#AppVersion}
AppPublisher=The Barnraise contributors
DefaultDirName={autopf}\{#AppName}
DefaultGroupName={#AppName}
PrivilegesRequired=lowest
PrivilegesRequiredOverridesAllowed=dialog
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
OutputDir=..\..\dist
OutputBaseFilename=barnraise-{#AppVersion}-windows-x64-setup
SetupIconFile=barnraise.ico
UninstallDisplayIcon={app}\{#AppExe}
Compression=lzma2/max
SolidCompression=yes
WizardStyle=modern
CloseApplications=yes
ChangesAssociations=yes

[Tasks]
Name: "autostart"; Description: "Start {#AppName} when I log in"; GroupDescription: "Options:"; Flags: unchecked
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"; Flags: unchecked

[Files]
Source: "..\..\dist\barnraise\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{group}\{#AppName}"; Filename: "{app}\{#AppExe}"; Parameters: "--show"; AppUserModelID: "{#AppId}"
Name: "{group}\Uninstall {#AppName}"; Filename: "{uninstallexe}"
Name: "{autodesktop}\{#AppName}"; Filename: "{app}\{#AppExe}"; Parameters: "--show"; Tasks: desktopicon

[Registry]
; barnraise: URL protocol (per user). "URL Protocol" (empty) marks the key as a protocol.
Root: HKCU; Subkey: "Software\Classes\barnraise"; ValueType: string; ValueName: ""; ValueData: "URL:Barnraise invite link"; Flags: uninsdeletekey
Root: HKCU; Subkey: "Software\Classes\barnraise"; ValueType: string; ValueName: "URL Protocol"; ValueData: ""
Root: HKCU; Subkey: "Software\Classes\barnraise\DefaultIcon"; ValueType: string; ValueName: ""; ValueData: """{app}\{#AppExe}"",0"
Root: HKCU; Subkey: "Software\Classes\barnraise\shell\open\command"; ValueType: string; ValueName: ""; ValueData: """{app}\{#AppExe}"" ""%1"""
; Start at login: the value app/tray/autostart.py reads and writes ("Barnraise" under Run).
Root: HKCU; Subkey: "Software\Microsoft\Windows\CurrentVersion\Run"; ValueType: string; ValueName: "Barnraise"; ValueData: """{app}\{#AppExe}"" --minimized"; Tasks: autostart; Flags: uninsdeletevalue

[Run]
Filename: "{app}\{#AppExe}"; Parameters: "--show"; Description: "{cm:LaunchProgram,{#AppName}}"; Flags: nowait postinstall skipifsilent

[UninstallDelete]
; The Run value may have been written by the app itself (Preferences), not by this installer.
Type: files; Name: "{app}\*.log"

[Code]
procedure CurUninstallStepChanged(CurUninstallStep: TUninstallStep);
begin
  if CurUninstallStep = usPostUninstall then
    RegDeleteValue(HKEY_CURRENT_USER, 'Software\Microsoft\Windows\CurrentVersion\Run', 'Barnraise');
end;
