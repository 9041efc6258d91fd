<#
.SYNOPSIS
    keyfleet collect helper: hands over a key file an administrator made with the wizard.
.DESCRIPTION
    Sent after common.ps1 and conpty.ps1 as one script. -Params: path (the agreed outbox folder),
    action ('fetch' or 'remove'), name and sha256 (remove only); needs no secret. fetch returns the
    newest *.bin file of the folder (base64, SHA-256, size, name, time written) with every SCSM role
    and the version of the server. remove deletes that one file, and only if its SHA-256 is still
    the one keyfleet stored: keyfleet asks for it only after the share holds the file.
#>
Assert-Administrator
$folder = [string](Get-Param 'path')
if (-not $folder) { Stop-Helper 'remote' 'no outbox folder was given' }
$roles = Get-ScsmRoles
$version = Get-ScsmVersion
$global:KeyfleetServer = @{ roles = $roles; version = $version }
if (-not [IO.Directory]::Exists($folder)) { Stop-Helper 'no-key-file' "the outbox folder $folder does not exist: run the wizard (SecureStorageBackup.exe) and save the key file there" }
$action = [string](Get-Param 'action')
if ($action -eq 'remove') {
    $name = [IO.Path]::GetFileName([string](Get-Param 'name'))
    $target = [IO.Path]::Combine($folder, $name)
    if (-not [IO.File]::Exists($target)) { Stop-Helper 'remote' "$target no longer exists" }
    if ((Get-Sha256Hex ([IO.File]::ReadAllBytes($target))) -ne [string](Get-Param 'sha256')) {
        Stop-Helper 'integrity' "$target changed since keyfleet collected it; it was not removed"
    }
    [IO.File]::Delete($target)
    return @{ removed = $target; computer_name = $env:COMPUTERNAME; helper_version = $HelperVersion }
}
$newest = $null
foreach ($file in ([IO.DirectoryInfo]$folder).GetFiles('*.bin')) {
    if ($null -eq $newest -or $file.LastWriteTimeUtc -gt $newest.LastWriteTimeUtc) { $newest = $file }
}
if ($null -eq $newest) { Stop-Helper 'no-key-file' "no key file (*.bin) in $folder`: run the wizard (SecureStorageBackup.exe) and save the key file there" }
if ($newest.Length -eq 0 -or $newest.Length -gt $MaximumKeyFileBytes) {
    Stop-Helper 'tool-failed' ('{0} has {1} bytes (expected 1 to {2})' -f $newest.FullName, $newest.Length, $MaximumKeyFileBytes)
}
$bytes = [IO.File]::ReadAllBytes($newest.FullName)
return @{
    file           = [Convert]::ToBase64String($bytes)
    sha256         = Get-Sha256Hex $bytes
    size           = $bytes.Length
    name           = $newest.Name
    written        = $newest.LastWriteTimeUtc.ToString('yyyy-MM-ddTHH:mm:ssZ')
    roles          = $roles
    version        = $version
    method         = 'wizard'
    computer_name  = $env:COMPUTERNAME
    helper_version = $HelperVersion
}
